//! The configuration tree of CONTRACT.md ("Configuration"): its built-in defaults, the JSON file layer
//! (walked by hand so every error names the full dotted key), the environment-variable layer, the
//! command-line overrides, validation, and the initial runtime feature state derived from it all.
//!
//! Precedence: built-in defaults < JSON file < environment variables < command-line flags; see
//! [`Config::load`] and [`Config::load_with`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::features::{Feature, FeatureSet};

/// Every environment variable the configuration reads (CONTRACT "Configuration").
pub const ENV_VARS: &[&str] = &[
    "SSE_ENABLED",
    "WEBSOCKET_ENABLED",
    "MAX_CONNECTIONS",
    "STREAM_BUFFER_SIZE",
    "PROCESSING_INTERVAL",
    "STREAM_COMPRESSION",
    "CONNECTION_POOLING",
    "AUTO_RECONNECTION",
    "MONITORING_ENABLED",
    "STREAM_AUTHENTICATION",
    "STREAM_RATE_LIMITING",
    "MAX_REQUESTS_PER_MINUTE",
    "CORS_ENABLED",
    "MCP_STREAM_LISTEN",
    "MCP_STREAM_TOKENS",
    "MCP_STREAM_JWT_SECRET",
    "MCP_STREAM_ADMIN_TOKEN",
];

/// A configuration problem; `Display` is the one-line reason (it names the key, variable or file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl ConfigError {
    /// The one-line reason.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration; `Default` is the contract's built-in defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `listen`: the address to bind (`127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// `max_connections`: open connections of every kind together (1000).
    pub max_connections: usize,
    /// `features`: the configured toggles; see [`Config::effective_features`] for the startup state.
    pub features: FeatureSet,
    /// `streaming.sse`.
    pub sse: SseConfig,
    /// `streaming.websocket`.
    pub websocket: WebSocketConfig,
    /// `streaming.real_time`.
    pub real_time: RealTimeConfig,
    /// `streaming.monitoring`.
    pub monitoring: MonitoringConfig,
    /// `streaming.backpressure`.
    pub backpressure: BackpressureConfig,
    /// `streaming.limits`.
    pub limits: LimitsConfig,
    /// `streaming.security`.
    pub security: SecurityConfig,
    /// `tls`.
    pub tls: TlsConfig,
    /// `mcp`.
    pub mcp: McpConfig,
}

/// `streaming.sse`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseConfig {
    /// `enabled` (true); ANDed into `sse-streaming` at startup.
    pub enabled: bool,
    /// `max_connections`: concurrent SSE streams (1000).
    pub max_connections: usize,
    /// `heartbeat_secs`: idle time before a `: ping` comment (15).
    pub heartbeat_secs: u64,
    /// `retry_ms`: the `retry:` line sent first (3000).
    pub retry_ms: u64,
}

/// `streaming.websocket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// `enabled` (true); ANDed into `websocket-streaming` at startup.
    pub enabled: bool,
    /// `room_management` (true).
    pub room_management: bool,
    /// `message_history`: events kept per topic, for every transport (100).
    pub message_history: usize,
    /// `max_message_bytes`: largest inbound message; over it closes with 1009 (65536).
    pub max_message_bytes: usize,
    /// `ping_interval_secs` (30).
    pub ping_interval_secs: u64,
    /// `pong_timeout_secs`: how long an unanswered ping may wait before the peer is closed (10).
    pub pong_timeout_secs: u64,
}

/// `streaming.real_time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealTimeConfig {
    /// `enabled` (true); ANDed into `real-time-analytics` at startup.
    pub enabled: bool,
    /// `buffer_size` (1000).
    pub buffer_size: usize,
    /// `processing_interval`, in milliseconds (100).
    pub processing_interval: u64,
}

/// `streaming.monitoring`: the performance monitor of the `stream-monitoring` feature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitoringConfig {
    /// `interval_secs`: how often it checks (10).
    pub interval_secs: u64,
    /// `p99_latency_ms`: the p99 delivery latency over a period above which the server is
    /// degraded (1000).
    pub p99_latency_ms: u64,
    /// `error_rate_percent`: the share of failed operations over a period above which the server
    /// is degraded, 1 to 100 (5).
    pub error_rate_percent: u64,
}

/// What to do with a consumer whose outbound queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumer {
    /// `"disconnect"`: close the connection.
    Disconnect,
    /// `"drop_oldest"`: drop queued events and tell the client how many it lost.
    DropOldest,
}

impl SlowConsumer {
    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::DropOldest => "drop_oldest",
        }
    }
}

/// `streaming.backpressure`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackpressureConfig {
    /// `max_queue_bytes`: outbound bytes queued per connection (262144).
    pub max_queue_bytes: usize,
    /// `slow_consumer` (`disconnect`).
    pub slow_consumer: SlowConsumer,
}

/// `streaming.limits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `max_head_bytes`: request line plus headers (16384).
    pub max_head_bytes: usize,
    /// `max_body_bytes` (1048576).
    pub max_body_bytes: usize,
    /// `head_timeout_ms`: time to receive a whole request head (10000).
    pub head_timeout_ms: u64,
    /// `idle_timeout_secs`: keep-alive connections with no stream open (60).
    pub idle_timeout_secs: u64,
    /// `max_connections_per_ip`: 0 means unlimited (0).
    pub max_connections_per_ip: usize,
    /// `body_timeout_ms`: time to receive a whole request body (30000). Our addition.
    pub body_timeout_ms: u64,
    /// `drain_timeout_ms`: bound on flushing queued output at shutdown (5000). Our addition.
    pub drain_timeout_ms: u64,
    /// `max_topics`: topics the hub keeps at once (10000). Our addition.
    pub max_topics: usize,
    /// `max_header_count`: headers per request (64). Our addition.
    pub max_header_count: usize,
}

/// `streaming.security`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityConfig {
    /// `authentication` (false); turns `stream-authentication` on at startup.
    pub authentication: bool,
    /// `tokens`: static bearer tokens ([]).
    pub tokens: Vec<String>,
    /// `jwt_secret`: HS256 key (null).
    pub jwt_secret: Option<String>,
    /// `admin_token`: bearer token of the admin API (null: loopback peers only).
    pub admin_token: Option<String>,
    /// `rate_limiting` (false); turns `stream-rate-limiting` on at startup.
    pub rate_limiting: bool,
    /// `max_requests_per_minute` (100).
    pub max_requests_per_minute: u64,
    /// `cors_origins` (["*"]).
    pub cors_origins: Vec<String>,
    /// `allowed_origins` ([]).
    pub allowed_origins: Vec<String>,
    /// `cors_enabled`: send CORS headers (true). Our addition.
    pub cors_enabled: bool,
}

/// `tls`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `cert`: PEM certificate chain file (null).
    pub cert: Option<PathBuf>,
    /// `key`: PEM private key file (null).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is configured (both files set; validation rejects only one).
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// `mcp`.
#[derive(Clone, Debug, PartialEq)]
pub struct McpConfig {
    /// `enabled` (true); ANDed into `mcp-transport` at startup.
    pub enabled: bool,
    /// `path`: the Streamable HTTP endpoint (`/mcp`).
    pub path: String,
    /// `session_idle_secs`: idle MCP sessions are ended after this (300).
    pub session_idle_secs: u64,
    /// `stdio`: the gateway's child command (null: none, the built-in tools serve).
    pub stdio: Option<StdioCommand>,
    /// `max_sessions`: MCP sessions at once, so children of a gateway too (null: `max_connections`,
    /// or 64 with a gateway). Our addition.
    pub max_sessions: Option<usize>,
}

/// `mcp.stdio`: how the gateway starts the MCP server that serves each session.
///
/// A string runs through `/bin/sh -c` (quotes, variables and `cd x &&` work as in a shell); an
/// object `{"command", "args", "env", "cwd", "request_timeout_secs", "grace_ms"}` runs
/// `command` itself with `args`, as MCP clients' own configs do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StdioCommand {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the environment it inherits.
    pub env: Vec<(String, String)>,
    /// Its working directory (null: ours).
    pub cwd: Option<PathBuf>,
    /// `request_timeout_secs`: how long a request waits for the child's answer; each progress
    /// notification starts the wait again (120).
    pub request_timeout_secs: u64,
    /// `grace_ms`: how long a child is given after its input closes before SIGTERM, and after
    /// SIGTERM before SIGKILL (2000).
    pub grace_ms: u64,
    /// The command as written, for logs and errors.
    pub display: String,
}

impl StdioCommand {
    /// The string form: `command` run by `/bin/sh -c`.
    pub fn shell(command: &str) -> StdioCommand {
        StdioCommand {
            program: "/bin/sh".to_string(),
            args: vec!["-c".to_string(), command.to_string()],
            env: Vec::new(),
            cwd: None,
            request_timeout_secs: 120,
            grace_ms: 2000,
            display: command.to_string(),
        }
    }

    /// `request_timeout_secs` as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// `grace_ms` as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            max_connections: 1000,
            features: FeatureSet::default(),
            sse: SseConfig::default(),
            websocket: WebSocketConfig::default(),
            real_time: RealTimeConfig::default(),
            monitoring: MonitoringConfig::default(),
            backpressure: BackpressureConfig::default(),
            limits: LimitsConfig::default(),
            security: SecurityConfig::default(),
            tls: TlsConfig::default(),
            mcp: McpConfig::default(),
        }
    }
}

impl Default for SseConfig {
    fn default() -> SseConfig {
        SseConfig {
            enabled: true,
            max_connections: 1000,
            heartbeat_secs: 15,
            retry_ms: 3000,
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> WebSocketConfig {
        WebSocketConfig {
            enabled: true,
            room_management: true,
            message_history: 100,
            max_message_bytes: 65536,
            ping_interval_secs: 30,
            pong_timeout_secs: 10,
        }
    }
}

impl Default for RealTimeConfig {
    fn default() -> RealTimeConfig {
        RealTimeConfig {
            enabled: true,
            buffer_size: 1000,
            processing_interval: 100,
        }
    }
}

impl Default for MonitoringConfig {
    fn default() -> MonitoringConfig {
        MonitoringConfig {
            interval_secs: 10,
            p99_latency_ms: 1000,
            error_rate_percent: 5,
        }
    }
}

impl Default for BackpressureConfig {
    fn default() -> BackpressureConfig {
        BackpressureConfig {
            max_queue_bytes: 262144,
            slow_consumer: SlowConsumer::Disconnect,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_head_bytes: 16384,
            max_body_bytes: 1048576,
            head_timeout_ms: 10000,
            idle_timeout_secs: 60,
            max_connections_per_ip: 0,
            body_timeout_ms: 30000,
            drain_timeout_ms: 5000,
            max_topics: 10000,
            max_header_count: 64,
        }
    }
}

impl Default for SecurityConfig {
    fn default() -> SecurityConfig {
        SecurityConfig {
            authentication: false,
            tokens: Vec::new(),
            jwt_secret: None,
            admin_token: None,
            rate_limiting: false,
            max_requests_per_minute: 100,
            cors_origins: vec!["*".to_string()],
            allowed_origins: Vec::new(),
            cors_enabled: true,
        }
    }
}

impl Default for McpConfig {
    fn default() -> McpConfig {
        McpConfig {
            enabled: true,
            path: "/mcp".to_string(),
            session_idle_secs: 300,
            stdio: None,
            max_sessions: None,
        }
    }
}

impl SseConfig {
    /// `heartbeat_secs` as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// `retry_ms` as a duration.
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }
}

impl WebSocketConfig {
    /// `ping_interval_secs` as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    /// `pong_timeout_secs` as a duration.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_secs)
    }
}

impl RealTimeConfig {
    /// `processing_interval` (milliseconds) as a duration.
    pub fn processing_period(&self) -> Duration {
        Duration::from_millis(self.processing_interval)
    }
}

impl MonitoringConfig {
    /// `interval_secs` as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// The thresholds as the monitor takes them.
    pub fn thresholds(&self) -> crate::proto::metrics::Thresholds {
        crate::proto::metrics::Thresholds {
            p99_latency: Duration::from_millis(self.p99_latency_ms),
            error_rate_percent: self.error_rate_percent,
        }
    }
}

impl LimitsConfig {
    /// `head_timeout_ms` as a duration.
    pub fn head_timeout(&self) -> Duration {
        Duration::from_millis(self.head_timeout_ms)
    }

    /// `body_timeout_ms` as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// `idle_timeout_secs` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// `drain_timeout_ms` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

impl McpConfig {
    /// `session_idle_secs` as a duration.
    pub fn session_idle(&self) -> Duration {
        Duration::from_secs(self.session_idle_secs)
    }

    /// The most MCP sessions at once: `max_sessions`, or by default `max_connections` (64 with a
    /// gateway, whose every session is a process).
    pub fn session_limit(&self, max_connections: usize) -> usize {
        match (self.max_sessions, &self.stdio) {
            (Some(n), _) => n,
            (None, Some(_)) => 64,
            (None, None) => max_connections,
        }
    }
}

/// Values from the command line, the highest-precedence layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen ADDR` → `listen`.
    pub listen: Option<SocketAddr>,
    /// `--tls-cert FILE` → `tls.cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE` → `tls.key`.
    pub tls_key: Option<PathBuf>,
    /// `--mcp-stdio "COMMAND ARGS"` → `mcp.stdio` (as a JSON string).
    pub mcp_stdio: Option<String>,
}

/// Parses a listen address: any `SocketAddr` (`127.0.0.1:8080`, `[::1]:0`), or `localhost:PORT`,
/// which means `127.0.0.1:PORT`. No DNS lookups.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let port = s.strip_prefix("localhost:")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

fn err<T>(msg: String) -> Result<T, ConfigError> {
    Err(ConfigError(msg))
}

/// A value as JSON text for an error message, shortened if long.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let head: String = s.chars().take(57).collect();
        format!("{head}...")
    } else {
        s
    }
}

/// A string as a quoted JSON string for an error message, shortened if long.
fn show_str(s: &str) -> String {
    show(&Value::String(s.to_string()))
}

/// The dotted path of `key` under `prefix`; a key with control characters is written
/// escaped, as in JSON, so that every error stays one line.
fn join(prefix: &str, key: &str) -> String {
    let key = if key.chars().any(char::is_control) {
        let quoted = Value::String(key.to_string()).to_string();
        quoted[1..quoted.len() - 1].to_string()
    } else {
        key.to_string()
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

fn unknown_key<T>(path: &str) -> Result<T, ConfigError> {
    err(format!("unknown key \"{path}\""))
}

fn type_error<T>(path: &str, what: &str, v: &Value) -> Result<T, ConfigError> {
    err(format!("\"{path}\" must be {what}, got {}", show(v)))
}

fn j_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => type_error(path, "an object", v),
    }
}

fn j_bool(v: &Value, path: &str) -> Result<bool, ConfigError> {
    match v {
        Value::Bool(b) => Ok(*b),
        _ => type_error(path, "true or false", v),
    }
}

/// An integer that must be ≥ 1 after validation (the type message says so).
const POSITIVE: &str = "a positive integer";
/// An integer where 0 is meaningful.
const NON_NEGATIVE: &str = "a non-negative integer";

fn j_u64(v: &Value, path: &str, what: &str) -> Result<u64, ConfigError> {
    match v.as_u64() {
        Some(n) => Ok(n),
        None => type_error(path, what, v),
    }
}

fn j_usize(v: &Value, path: &str, what: &str) -> Result<usize, ConfigError> {
    let n = j_u64(v, path, what)?;
    match usize::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => err(format!("\"{path}\" is too large, got {n}")),
    }
}

fn j_string(v: &Value, path: &str) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => type_error(path, "a string", v),
    }
}

fn j_opt_string(v: &Value, path: &str) -> Result<Option<String>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => type_error(path, "a string or null", v),
    }
}

fn j_opt_path(v: &Value, path: &str) -> Result<Option<PathBuf>, ConfigError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
        _ => type_error(path, "a file path or null", v),
    }
}

fn j_string_list(v: &Value, path: &str) -> Result<Vec<String>, ConfigError> {
    let Value::Array(items) = v else {
        return type_error(path, "an array of strings", v);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| j_string(item, &format!("{path}[{i}]")))
        .collect()
}

fn j_slow_consumer(v: &Value, path: &str) -> Result<SlowConsumer, ConfigError> {
    match v.as_str() {
        Some("disconnect") => Ok(SlowConsumer::Disconnect),
        Some("drop_oldest") => Ok(SlowConsumer::DropOldest),
        Some("conflate") => err(format!(
            "\"{path}\": \"conflate\" is not supported yet (use \"disconnect\" or \"drop_oldest\")"
        )),
        _ => type_error(path, "\"disconnect\" or \"drop_oldest\"", v),
    }
}

fn j_listen(v: &Value, path: &str) -> Result<SocketAddr, ConfigError> {
    match v.as_str().and_then(parse_listen) {
        Some(a) => Ok(a),
        None => type_error(path, "an address like 127.0.0.1:8080", v),
    }
}

fn j_stdio(v: &Value, path: &str) -> Result<Option<StdioCommand>, ConfigError> {
    let object = match v {
        Value::Null => return Ok(None),
        Value::String(s) if !s.trim().is_empty() => return Ok(Some(StdioCommand::shell(s))),
        Value::Object(object) => object,
        _ => return type_error(path, "null, a command string or an object", v),
    };
    let mut command = StdioCommand::shell("");
    command.args.clear();
    let mut program = None;
    for (k, v) in object {
        let p = join(path, k);
        match k.as_str() {
            "command" => match v.as_str().filter(|s| !s.trim().is_empty()) {
                Some(s) => program = Some(s.to_string()),
                None => return type_error(&p, "a non-empty string", v),
            },
            "args" => command.args = j_string_list(v, &p)?,
            "env" => {
                for (name, value) in j_object(v, &p)? {
                    let value = j_string(value, &join(&p, name))?;
                    if name.is_empty() || name.contains(['=', '\0']) {
                        return err(format!(
                            "\"{p}\" has an invalid variable name {}",
                            show_str(name)
                        ));
                    }
                    command.env.push((name.clone(), value));
                }
            }
            "cwd" => command.cwd = j_opt_path(v, &p)?,
            "request_timeout_secs" => command.request_timeout_secs = j_u64(v, &p, POSITIVE)?,
            "grace_ms" => command.grace_ms = j_u64(v, &p, POSITIVE)?,
            _ => return unknown_key(&p),
        }
    }
    let Some(program) = program else {
        return err(format!("\"{path}\" needs \"command\""));
    };
    command.display = std::iter::once(program.as_str())
        .chain(command.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    command.program = program;
    Ok(Some(command))
}

/// `invalid JSON at line L column C: reason` from a serde_json error.
fn json_syntax_error(e: &serde_json::Error) -> ConfigError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&suffix).unwrap_or(&full);
    ConfigError(format!(
        "invalid JSON at line {} column {}: {reason}",
        e.line(),
        e.column()
    ))
}

/// The reason of an I/O error without the trailing ` (os error N)`.
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// An environment value parsed as a boolean: true/false (any case), 1/0.
fn env_bool(name: &str, val: &str) -> Result<bool, ConfigError> {
    let t = val.trim();
    if t == "1" || t.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if t == "0" || t.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        err(format!(
            "environment variable {name} must be true, false, 1 or 0, got {}",
            show_str(val)
        ))
    }
}

fn env_u64(name: &str, val: &str, what: &str) -> Result<u64, ConfigError> {
    match val.trim().parse::<u64>() {
        Ok(n) => Ok(n),
        Err(_) => err(format!(
            "environment variable {name} must be {what}, got {}",
            show_str(val)
        )),
    }
}

fn env_usize(name: &str, val: &str, what: &str) -> Result<usize, ConfigError> {
    let n = env_u64(name, val, what)?;
    usize::try_from(n)
        .or_else(|_| err(format!("environment variable {name} is too large, got {n}")))
}

/// The most connections any limit may allow.
const MAX_CONNECTIONS: u64 = 1 << 22;

fn check_positive(path: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return err(format!("\"{path}\" must be a positive integer, got 0"));
    }
    Ok(())
}

fn check_range(path: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return err(format!("\"{path}\" must be between {lo} and {hi}, got {v}"));
    }
    Ok(())
}

fn check_non_empty_items(path: &str, items: &[String]) -> Result<(), ConfigError> {
    for (i, s) in items.iter().enumerate() {
        if s.is_empty() {
            return err(format!("\"{path}[{i}]\" must be a non-empty string"));
        }
    }
    Ok(())
}

fn check_non_empty_opt(path: &str, v: &Option<String>) -> Result<(), ConfigError> {
    if v.as_deref() == Some("") {
        return err(format!("\"{path}\" must not be empty (use null for none)"));
    }
    Ok(())
}

impl Config {
    /// Applies a JSON config file's text over the current values (the file layer).
    ///
    /// Every key is optional; an unknown key, a wrong type, or an unknown feature name is an error
    /// naming the full dotted key. Ranges are checked by [`Config::validate`], not here.
    pub fn apply_json(&mut self, text: &str) -> Result<(), ConfigError> {
        let root: Value = serde_json::from_str(text).map_err(|e| json_syntax_error(&e))?;
        let Value::Object(root) = &root else {
            return err(format!(
                "the config must be a JSON object, got {}",
                show(&root)
            ));
        };
        for (k, v) in root {
            let p = k.as_str();
            match p {
                "listen" => self.listen = j_listen(v, p)?,
                "max_connections" => self.max_connections = j_usize(v, p, POSITIVE)?,
                "features" => self.apply_features(v, p)?,
                "streaming" => self.apply_streaming(v, p)?,
                "tls" => self.apply_tls(v, p)?,
                "mcp" => self.apply_mcp(v, p)?,
                _ => return unknown_key(&join("", p)),
            }
        }
        Ok(())
    }

    fn apply_features(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            let Some(f) = Feature::from_name(k) else {
                let known: Vec<&str> = Feature::ALL.iter().map(|f| f.name()).collect();
                return err(format!(
                    "unknown key \"{p}\": not a feature name (known: {})",
                    known.join(", ")
                ));
            };
            self.features.set(f, j_bool(v, &p)?);
        }
        Ok(())
    }

    fn apply_streaming(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "sse" => self.apply_sse(v, &p)?,
                "websocket" => self.apply_websocket(v, &p)?,
                "real_time" => self.apply_real_time(v, &p)?,
                "monitoring" => self.apply_monitoring(v, &p)?,
                "backpressure" => self.apply_backpressure(v, &p)?,
                "limits" => self.apply_limits(v, &p)?,
                "security" => self.apply_security(v, &p)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_sse(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.sse;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "enabled" => c.enabled = j_bool(v, &p)?,
                "max_connections" => c.max_connections = j_usize(v, &p, POSITIVE)?,
                "heartbeat_secs" => c.heartbeat_secs = j_u64(v, &p, POSITIVE)?,
                "retry_ms" => c.retry_ms = j_u64(v, &p, NON_NEGATIVE)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_websocket(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.websocket;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "enabled" => c.enabled = j_bool(v, &p)?,
                "room_management" => c.room_management = j_bool(v, &p)?,
                "message_history" => c.message_history = j_usize(v, &p, NON_NEGATIVE)?,
                "max_message_bytes" => c.max_message_bytes = j_usize(v, &p, POSITIVE)?,
                "ping_interval_secs" => c.ping_interval_secs = j_u64(v, &p, POSITIVE)?,
                "pong_timeout_secs" => c.pong_timeout_secs = j_u64(v, &p, POSITIVE)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_real_time(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.real_time;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "enabled" => c.enabled = j_bool(v, &p)?,
                "buffer_size" => c.buffer_size = j_usize(v, &p, NON_NEGATIVE)?,
                "processing_interval" => c.processing_interval = j_u64(v, &p, NON_NEGATIVE)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_monitoring(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.monitoring;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "interval_secs" => c.interval_secs = j_u64(v, &p, POSITIVE)?,
                "p99_latency_ms" => c.p99_latency_ms = j_u64(v, &p, POSITIVE)?,
                "error_rate_percent" => c.error_rate_percent = j_u64(v, &p, POSITIVE)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_backpressure(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.backpressure;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "max_queue_bytes" => c.max_queue_bytes = j_usize(v, &p, POSITIVE)?,
                "slow_consumer" => c.slow_consumer = j_slow_consumer(v, &p)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_limits(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.limits;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "max_head_bytes" => c.max_head_bytes = j_usize(v, &p, POSITIVE)?,
                "max_body_bytes" => c.max_body_bytes = j_usize(v, &p, POSITIVE)?,
                "head_timeout_ms" => c.head_timeout_ms = j_u64(v, &p, POSITIVE)?,
                "idle_timeout_secs" => c.idle_timeout_secs = j_u64(v, &p, POSITIVE)?,
                "max_connections_per_ip" => {
                    c.max_connections_per_ip = j_usize(v, &p, NON_NEGATIVE)?
                }
                "body_timeout_ms" => c.body_timeout_ms = j_u64(v, &p, POSITIVE)?,
                "drain_timeout_ms" => c.drain_timeout_ms = j_u64(v, &p, NON_NEGATIVE)?,
                "max_topics" => c.max_topics = j_usize(v, &p, POSITIVE)?,
                "max_header_count" => c.max_header_count = j_usize(v, &p, POSITIVE)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_security(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.security;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "authentication" => c.authentication = j_bool(v, &p)?,
                "tokens" => c.tokens = j_string_list(v, &p)?,
                "jwt_secret" => c.jwt_secret = j_opt_string(v, &p)?,
                "admin_token" => c.admin_token = j_opt_string(v, &p)?,
                "rate_limiting" => c.rate_limiting = j_bool(v, &p)?,
                "max_requests_per_minute" => c.max_requests_per_minute = j_u64(v, &p, POSITIVE)?,
                "cors_origins" => c.cors_origins = j_string_list(v, &p)?,
                "allowed_origins" => c.allowed_origins = j_string_list(v, &p)?,
                "cors_enabled" => c.cors_enabled = j_bool(v, &p)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_tls(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "cert" => self.tls.cert = j_opt_path(v, &p)?,
                "key" => self.tls.key = j_opt_path(v, &p)?,
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    fn apply_mcp(&mut self, v: &Value, path: &str) -> Result<(), ConfigError> {
        let c = &mut self.mcp;
        for (k, v) in j_object(v, path)? {
            let p = join(path, k);
            match k.as_str() {
                "enabled" => c.enabled = j_bool(v, &p)?,
                "path" => c.path = j_string(v, &p)?,
                "session_idle_secs" => c.session_idle_secs = j_u64(v, &p, POSITIVE)?,
                "stdio" => c.stdio = j_stdio(v, &p)?,
                "max_sessions" => {
                    c.max_sessions = match v {
                        Value::Null => None,
                        _ => Some(j_usize(v, &p, POSITIVE)?),
                    }
                }
                _ => return unknown_key(&p),
            }
        }
        Ok(())
    }

    /// Applies the environment layer. `lookup` returns a variable's value (production passes
    /// `|k| std::env::var(k).ok()`); an empty value counts as unset. A bad value is an error naming
    /// the variable.
    pub fn apply_env<F: Fn(&str) -> Option<String>>(
        &mut self,
        lookup: F,
    ) -> Result<(), ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());

        let bools: [(&str, &mut bool); 5] = [
            ("SSE_ENABLED", &mut self.sse.enabled),
            ("WEBSOCKET_ENABLED", &mut self.websocket.enabled),
            ("STREAM_AUTHENTICATION", &mut self.security.authentication),
            ("STREAM_RATE_LIMITING", &mut self.security.rate_limiting),
            ("CORS_ENABLED", &mut self.security.cors_enabled),
        ];
        for (name, slot) in bools {
            if let Some(v) = get(name) {
                *slot = env_bool(name, &v)?;
            }
        }

        let features = [
            ("STREAM_COMPRESSION", Feature::StreamCompression),
            ("CONNECTION_POOLING", Feature::ConnectionPooling),
            ("AUTO_RECONNECTION", Feature::AutoReconnection),
            ("MONITORING_ENABLED", Feature::StreamMonitoring),
        ];
        for (name, f) in features {
            if let Some(v) = get(name) {
                self.features.set(f, env_bool(name, &v)?);
            }
        }

        if let Some(v) = get("MAX_CONNECTIONS") {
            self.max_connections = env_usize("MAX_CONNECTIONS", &v, POSITIVE)?;
        }
        if let Some(v) = get("STREAM_BUFFER_SIZE") {
            self.real_time.buffer_size = env_usize("STREAM_BUFFER_SIZE", &v, NON_NEGATIVE)?;
        }
        if let Some(v) = get("PROCESSING_INTERVAL") {
            self.real_time.processing_interval = env_u64("PROCESSING_INTERVAL", &v, NON_NEGATIVE)?;
        }
        if let Some(v) = get("MAX_REQUESTS_PER_MINUTE") {
            self.security.max_requests_per_minute =
                env_u64("MAX_REQUESTS_PER_MINUTE", &v, POSITIVE)?;
        }
        if let Some(v) = get("MCP_STREAM_LISTEN") {
            self.listen = match parse_listen(v.trim()) {
                Some(a) => a,
                None => {
                    return err(format!(
                        "environment variable MCP_STREAM_LISTEN must be an address like 127.0.0.1:8080, got {}",
                        show_str(&v)
                    ))
                }
            };
        }
        if let Some(v) = get("MCP_STREAM_TOKENS") {
            self.security.tokens = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
        }
        if let Some(v) = get("MCP_STREAM_JWT_SECRET") {
            self.security.jwt_secret = Some(v);
        }
        if let Some(v) = get("MCP_STREAM_ADMIN_TOKEN") {
            self.security.admin_token = Some(v);
        }
        Ok(())
    }

    /// Applies the command-line layer.
    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(a) = o.listen {
            self.listen = a;
        }
        if let Some(p) = &o.tls_cert {
            self.tls.cert = Some(p.clone());
        }
        if let Some(p) = &o.tls_key {
            self.tls.key = Some(p.clone());
        }
        if let Some(cmd) = &o.mcp_stdio {
            self.mcp.stdio = Some(StdioCommand::shell(cmd));
        }
    }

    /// Checks every range and consistency rule; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = |n: usize| n as u64;
        // Connection slots are indexed by tokens: keep them well inside any token range.
        check_range(
            "max_connections",
            u(self.max_connections),
            1,
            MAX_CONNECTIONS,
        )?;

        let sse = &self.sse;
        check_range(
            "streaming.sse.max_connections",
            u(sse.max_connections),
            1,
            MAX_CONNECTIONS,
        )?;
        check_positive("streaming.sse.heartbeat_secs", sse.heartbeat_secs)?;

        let monitoring = &self.monitoring;
        // A year at most: the deadline must stay far from `Instant`'s end.
        check_range(
            "streaming.monitoring.interval_secs",
            monitoring.interval_secs,
            1,
            31_536_000,
        )?;
        check_positive(
            "streaming.monitoring.p99_latency_ms",
            monitoring.p99_latency_ms,
        )?;
        check_range(
            "streaming.monitoring.error_rate_percent",
            monitoring.error_rate_percent,
            1,
            100,
        )?;

        let ws = &self.websocket;
        if u(ws.message_history) > 1_000_000 {
            return err(format!(
                "\"streaming.websocket.message_history\" must be at most 1000000, got {}",
                ws.message_history
            ));
        }
        check_range(
            "streaming.websocket.max_message_bytes",
            u(ws.max_message_bytes),
            16,
            67_108_864,
        )?;
        check_positive(
            "streaming.websocket.ping_interval_secs",
            ws.ping_interval_secs,
        )?;
        check_positive(
            "streaming.websocket.pong_timeout_secs",
            ws.pong_timeout_secs,
        )?;

        let bp = &self.backpressure;
        if bp.max_queue_bytes < 4096 {
            return err(format!(
                "\"streaming.backpressure.max_queue_bytes\" must be at least 4096, got {}",
                bp.max_queue_bytes
            ));
        }
        if bp.max_queue_bytes < ws.max_message_bytes {
            return err(format!(
                "\"streaming.backpressure.max_queue_bytes\" ({}) must be at least \"streaming.websocket.max_message_bytes\" ({})",
                bp.max_queue_bytes, ws.max_message_bytes
            ));
        }

        let l = &self.limits;
        check_range(
            "streaming.limits.max_head_bytes",
            u(l.max_head_bytes),
            256,
            1_048_576,
        )?;
        check_positive("streaming.limits.max_body_bytes", u(l.max_body_bytes))?;
        check_positive("streaming.limits.head_timeout_ms", l.head_timeout_ms)?;
        check_positive("streaming.limits.body_timeout_ms", l.body_timeout_ms)?;
        check_positive("streaming.limits.idle_timeout_secs", l.idle_timeout_secs)?;
        check_positive("streaming.limits.max_topics", u(l.max_topics))?;
        check_range(
            "streaming.limits.max_header_count",
            u(l.max_header_count),
            8,
            256,
        )?;

        let s = &self.security;
        check_non_empty_items("streaming.security.tokens", &s.tokens)?;
        check_non_empty_opt("streaming.security.jwt_secret", &s.jwt_secret)?;
        check_non_empty_opt("streaming.security.admin_token", &s.admin_token)?;
        check_positive(
            "streaming.security.max_requests_per_minute",
            s.max_requests_per_minute,
        )?;
        check_non_empty_items("streaming.security.cors_origins", &s.cors_origins)?;
        check_non_empty_items("streaming.security.allowed_origins", &s.allowed_origins)?;

        match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => {
                return err(
                    "\"tls.cert\" is set but \"tls.key\" is not: set both or neither".into(),
                )
            }
            (None, Some(_)) => {
                return err(
                    "\"tls.key\" is set but \"tls.cert\" is not: set both or neither".into(),
                )
            }
            _ => {}
        }

        if !self.mcp.path.starts_with('/') {
            return err(format!(
                "\"mcp.path\" must start with '/', got {}",
                show_str(&self.mcp.path)
            ));
        }
        check_positive("mcp.session_idle_secs", self.mcp.session_idle_secs)?;
        if let Some(n) = self.mcp.max_sessions {
            check_range("mcp.max_sessions", u(n), 1, MAX_CONNECTIONS)?;
        }
        if let Some(stdio) = &self.mcp.stdio {
            check_range(
                "mcp.stdio.request_timeout_secs",
                stdio.request_timeout_secs,
                1,
                86_400,
            )?;
            check_range("mcp.stdio.grace_ms", stdio.grace_ms, 1, 600_000)?;
        }
        Ok(())
    }

    /// The runtime toggles at startup: `features`, with `sse-streaming`, `websocket-streaming`,
    /// `mcp-transport` and `real-time-analytics` ANDed with their section's `enabled`, and
    /// `stream-authentication` / `stream-rate-limiting` also turned on by `security.authentication` /
    /// `security.rate_limiting`.
    pub fn effective_features(&self) -> FeatureSet {
        let mut fs = self.features;
        let and = |fs: &mut FeatureSet, f: Feature, on: bool| {
            let cur = fs.is_enabled(f);
            fs.set(f, cur && on);
        };
        and(&mut fs, Feature::SseStreaming, self.sse.enabled);
        and(&mut fs, Feature::WebsocketStreaming, self.websocket.enabled);
        and(&mut fs, Feature::McpTransport, self.mcp.enabled);
        and(&mut fs, Feature::RealTimeAnalytics, self.real_time.enabled);
        if self.security.authentication {
            fs.set(Feature::StreamAuthentication, true);
        }
        if self.security.rate_limiting {
            fs.set(Feature::StreamRateLimiting, true);
        }
        fs
    }

    /// Builds the configuration: defaults < `file` < environment (`env`) < `--listen`, then
    /// validates. Production passes `|k| std::env::var(k).ok()` as `env`.
    pub fn load<F: Fn(&str) -> Option<String>>(
        file: Option<&Path>,
        env: F,
        listen_flag: Option<SocketAddr>,
    ) -> Result<Config, ConfigError> {
        let flags = Overrides {
            listen: listen_flag,
            ..Overrides::default()
        };
        Config::load_with(file, env, &flags)
    }

    /// Like [`Config::load`], with every command-line override (listen, TLS files, MCP gateway).
    ///
    /// Errors from the file layer are prefixed with `config file PATH: `; a file that cannot be
    /// read gives `cannot read config file PATH: REASON`.
    pub fn load_with<F: Fn(&str) -> Option<String>>(
        file: Option<&Path>,
        env: F,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read config file {}: {}",
                    path.display(),
                    io_reason(&e)
                ))
            })?;
            cfg.apply_json(&text)
                .map_err(|e| ConfigError(format!("config file {}: {}", path.display(), e.0)))?;
        }
        cfg.apply_env(env)?;
        cfg.apply_overrides(flags);
        cfg.validate()?;
        let s = &cfg.security;
        if cfg
            .effective_features()
            .is_enabled(Feature::StreamAuthentication)
            && s.tokens.is_empty()
            && s.jwt_secret.is_none()
        {
            log::warn!(
                "stream authentication is on but no tokens or jwt_secret are configured: every protected request will get 401"
            );
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn from_json(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        c.apply_json(text)?;
        Ok(c)
    }

    fn json_err(text: &str) -> String {
        from_json(text).unwrap_err().to_string()
    }

    fn env_err(pairs: &[(&str, &str)]) -> String {
        Config::default()
            .apply_env(env(pairs))
            .unwrap_err()
            .to_string()
    }

    fn invalid(edit: impl FnOnce(&mut Config)) -> String {
        let mut c = Config::default();
        edit(&mut c);
        c.validate().unwrap_err().to_string()
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "mcp-stream-config-test-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(c.max_connections, 1000);
        assert_eq!(c.features, FeatureSet::default());
        assert_eq!(
            c.sse,
            SseConfig {
                enabled: true,
                max_connections: 1000,
                heartbeat_secs: 15,
                retry_ms: 3000
            }
        );
        assert_eq!(
            c.websocket,
            WebSocketConfig {
                enabled: true,
                room_management: true,
                message_history: 100,
                max_message_bytes: 65536,
                ping_interval_secs: 30,
                pong_timeout_secs: 10
            }
        );
        assert_eq!(
            c.real_time,
            RealTimeConfig {
                enabled: true,
                buffer_size: 1000,
                processing_interval: 100
            }
        );
        assert_eq!(c.backpressure.max_queue_bytes, 262144);
        assert_eq!(c.backpressure.slow_consumer, SlowConsumer::Disconnect);
        assert_eq!(
            c.limits,
            LimitsConfig {
                max_head_bytes: 16384,
                max_body_bytes: 1048576,
                head_timeout_ms: 10000,
                idle_timeout_secs: 60,
                max_connections_per_ip: 0,
                body_timeout_ms: 30000,
                drain_timeout_ms: 5000,
                max_topics: 10000,
                max_header_count: 64
            }
        );
        let s = &c.security;
        assert!(!s.authentication && !s.rate_limiting && s.cors_enabled);
        assert!(s.tokens.is_empty() && s.allowed_origins.is_empty());
        assert_eq!(s.jwt_secret, None);
        assert_eq!(s.admin_token, None);
        assert_eq!(s.max_requests_per_minute, 100);
        assert_eq!(s.cors_origins, vec!["*".to_string()]);
        assert_eq!(
            c.tls,
            TlsConfig {
                cert: None,
                key: None
            }
        );
        assert!(!c.tls.is_enabled());
        assert_eq!(
            c.mcp,
            McpConfig {
                enabled: true,
                path: "/mcp".into(),
                session_idle_secs: 300,
                stdio: None,
                max_sessions: None
            }
        );
        c.validate().unwrap();
    }

    #[test]
    fn duration_helpers_use_the_right_units() {
        let c = Config::default();
        assert_eq!(c.sse.heartbeat(), Duration::from_secs(15));
        assert_eq!(c.sse.retry(), Duration::from_millis(3000));
        assert_eq!(c.websocket.ping_interval(), Duration::from_secs(30));
        assert_eq!(c.websocket.pong_timeout(), Duration::from_secs(10));
        assert_eq!(c.real_time.processing_period(), Duration::from_millis(100));
        assert_eq!(c.limits.head_timeout(), Duration::from_millis(10000));
        assert_eq!(c.limits.body_timeout(), Duration::from_millis(30000));
        assert_eq!(c.limits.idle_timeout(), Duration::from_secs(60));
        assert_eq!(c.limits.drain_timeout(), Duration::from_millis(5000));
        assert_eq!(c.mcp.session_idle(), Duration::from_secs(300));
    }

    #[test]
    fn the_contract_example_file_parses_to_the_defaults() {
        let text = r#"{
          "listen": "127.0.0.1:8080",
          "max_connections": 1000,
          "features": { "sse-streaming": true, "websocket-streaming": true },
          "streaming": {
            "sse":       { "enabled": true, "max_connections": 1000, "heartbeat_secs": 15, "retry_ms": 3000 },
            "websocket": { "enabled": true, "room_management": true, "message_history": 100, "max_message_bytes": 65536,
                           "ping_interval_secs": 30, "pong_timeout_secs": 10 },
            "real_time": { "enabled": true, "buffer_size": 1000, "processing_interval": 100 },
            "monitoring": { "interval_secs": 10, "p99_latency_ms": 1000, "error_rate_percent": 5 },
            "backpressure": { "max_queue_bytes": 262144, "slow_consumer": "disconnect" },
            "limits":    { "max_head_bytes": 16384, "max_body_bytes": 1048576, "head_timeout_ms": 10000,
                           "idle_timeout_secs": 60, "max_connections_per_ip": 0 },
            "security":  { "authentication": false, "tokens": [], "jwt_secret": null, "admin_token": null,
                           "rate_limiting": false, "max_requests_per_minute": 100,
                           "cors_origins": ["*"], "allowed_origins": [] }
          },
          "tls": { "cert": null, "key": null },
          "mcp": { "enabled": true, "path": "/mcp", "session_idle_secs": 300, "stdio": null }
        }"#;
        assert_eq!(from_json(text).unwrap(), Config::default());
        assert_eq!(from_json("{}").unwrap(), Config::default());
    }

    #[test]
    fn every_key_lands_in_its_field() {
        let text = r#"{
          "listen": "0.0.0.0:9000",
          "max_connections": 7,
          "features": { "stream-compression": false, "uiforge-mcp.error-recovery": false,
                        "global.stream-rate-limiting": true },
          "streaming": {
            "sse": { "enabled": false, "max_connections": 3, "heartbeat_secs": 4, "retry_ms": 0 },
            "websocket": { "enabled": false, "room_management": false, "message_history": 0,
                           "max_message_bytes": 1024, "ping_interval_secs": 5, "pong_timeout_secs": 6 },
            "real_time": { "enabled": false, "buffer_size": 8, "processing_interval": 9 },
            "backpressure": { "max_queue_bytes": 8192, "slow_consumer": "drop_oldest" },
            "limits": { "max_head_bytes": 512, "max_body_bytes": 10, "head_timeout_ms": 11,
                        "idle_timeout_secs": 12, "max_connections_per_ip": 13, "body_timeout_ms": 14,
                        "drain_timeout_ms": 15, "max_topics": 16, "max_header_count": 17 },
            "security": { "authentication": true, "tokens": ["a", "b"], "jwt_secret": "s",
                          "admin_token": "adm", "rate_limiting": true, "max_requests_per_minute": 18,
                          "cors_origins": ["https://x.example"], "allowed_origins": ["https://y.example"],
                          "cors_enabled": false }
          },
          "tls": { "cert": "/c.pem", "key": "/k.pem" },
          "mcp": { "enabled": false, "path": "/rpc", "session_idle_secs": 19, "stdio": "node server.js" }
        }"#;
        let c = from_json(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(c.max_connections, 7);
        assert!(!c.features.is_enabled(Feature::StreamCompression));
        assert!(!c.features.is_enabled(Feature::ErrorRecovery));
        assert!(c.features.is_enabled(Feature::StreamRateLimiting));
        assert!(c.features.is_enabled(Feature::SseStreaming));
        assert_eq!(
            c.sse,
            SseConfig {
                enabled: false,
                max_connections: 3,
                heartbeat_secs: 4,
                retry_ms: 0
            }
        );
        assert_eq!(
            c.websocket,
            WebSocketConfig {
                enabled: false,
                room_management: false,
                message_history: 0,
                max_message_bytes: 1024,
                ping_interval_secs: 5,
                pong_timeout_secs: 6
            }
        );
        assert_eq!(
            c.real_time,
            RealTimeConfig {
                enabled: false,
                buffer_size: 8,
                processing_interval: 9
            }
        );
        assert_eq!(
            c.backpressure,
            BackpressureConfig {
                max_queue_bytes: 8192,
                slow_consumer: SlowConsumer::DropOldest
            }
        );
        assert_eq!(
            c.limits,
            LimitsConfig {
                max_head_bytes: 512,
                max_body_bytes: 10,
                head_timeout_ms: 11,
                idle_timeout_secs: 12,
                max_connections_per_ip: 13,
                body_timeout_ms: 14,
                drain_timeout_ms: 15,
                max_topics: 16,
                max_header_count: 17
            }
        );
        assert_eq!(
            c.security,
            SecurityConfig {
                authentication: true,
                tokens: vec!["a".into(), "b".into()],
                jwt_secret: Some("s".into()),
                admin_token: Some("adm".into()),
                rate_limiting: true,
                max_requests_per_minute: 18,
                cors_origins: vec!["https://x.example".into()],
                allowed_origins: vec!["https://y.example".into()],
                cors_enabled: false
            }
        );
        assert_eq!(c.tls.cert, Some(PathBuf::from("/c.pem")));
        assert_eq!(c.tls.key, Some(PathBuf::from("/k.pem")));
        assert!(c.tls.is_enabled());
        assert!(!c.mcp.enabled);
        assert_eq!(c.mcp.path, "/rpc");
        assert_eq!(c.mcp.session_idle_secs, 19);
        assert_eq!(c.mcp.stdio, Some(StdioCommand::shell("node server.js")));
    }

    #[test]
    fn file_layer_keeps_values_it_does_not_mention() {
        let mut c = Config::default();
        c.apply_json(r#"{"streaming":{"sse":{"heartbeat_secs":5}}}"#)
            .unwrap();
        c.apply_json(r#"{"streaming":{"sse":{"retry_ms":7}}}"#)
            .unwrap();
        assert_eq!(c.sse.heartbeat_secs, 5);
        assert_eq!(c.sse.retry_ms, 7);
        assert_eq!(c.sse.max_connections, 1000);
    }

    #[test]
    fn mcp_stdio_accepts_null_string_object_only() {
        let c = from_json(
            r#"{"mcp":{"stdio":{"command":"x","args":["-y"],"env":{"A":"1"},"cwd":"/tmp",
                "request_timeout_secs":5,"grace_ms":100}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.mcp.stdio,
            Some(StdioCommand {
                program: "x".into(),
                args: vec!["-y".into()],
                env: vec![("A".into(), "1".into())],
                cwd: Some("/tmp".into()),
                request_timeout_secs: 5,
                grace_ms: 100,
                display: "x -y".into(),
            })
        );
        assert_eq!(c.mcp.session_limit(1000), 64);
        assert_eq!(
            json_err(r#"{"mcp":{"stdio":{"args":[]}}}"#),
            "\"mcp.stdio\" needs \"command\""
        );
        assert_eq!(
            json_err(r#"{"mcp":{"stdio":{"command":"x","shell":true}}}"#),
            "unknown key \"mcp.stdio.shell\""
        );
        assert_eq!(
            json_err(r#"{"mcp":{"stdio":{"command":"x","env":{"A":2}}}}"#),
            "\"mcp.stdio.env.A\" must be a string, got 2"
        );
        let shell = from_json(r#"{"mcp":{"stdio":"node a.js","max_sessions":3}}"#).unwrap();
        let stdio = shell.mcp.stdio.as_ref().unwrap();
        assert_eq!(
            (stdio.program.as_str(), &stdio.args[..]),
            ("/bin/sh", &["-c".to_string(), "node a.js".to_string()][..])
        );
        assert_eq!(shell.mcp.session_limit(1000), 3);
        assert_eq!(Config::default().mcp.session_limit(1000), 1000);
        assert_eq!(
            invalid(|c| c.mcp.max_sessions = Some(0)),
            "\"mcp.max_sessions\" must be between 1 and 4194304, got 0"
        );
        let mut c = from_json(r#"{"mcp":{"stdio":"x"}}"#).unwrap();
        c.apply_json(r#"{"mcp":{"stdio":null}}"#).unwrap();
        assert_eq!(c.mcp.stdio, None);
        assert_eq!(
            json_err(r#"{"mcp":{"stdio":3}}"#),
            "\"mcp.stdio\" must be null, a command string or an object, got 3"
        );
        assert!(json_err(r#"{"mcp":{"stdio":"  "}}"#).starts_with("\"mcp.stdio\" must be"));
        assert!(json_err(r#"{"mcp":{"stdio":[]}}"#).starts_with("\"mcp.stdio\" must be"));
    }

    #[test]
    fn unknown_keys_are_named_with_their_full_path() {
        assert_eq!(json_err(r#"{"bogus":1}"#), "unknown key \"bogus\"");
        assert_eq!(
            json_err(r#"{"streaming":{"sse":{"foo":1}}}"#),
            "unknown key \"streaming.sse.foo\""
        );
        assert_eq!(
            json_err(r#"{"streaming":{"nope":{}}}"#),
            "unknown key \"streaming.nope\""
        );
        // Sections live under "streaming", not at the top level.
        assert_eq!(json_err(r#"{"sse":{}}"#), "unknown key \"sse\"");
        for (text, key) in [
            (
                r#"{"streaming":{"websocket":{"x":1}}}"#,
                "streaming.websocket.x",
            ),
            (
                r#"{"streaming":{"real_time":{"x":1}}}"#,
                "streaming.real_time.x",
            ),
            (
                r#"{"streaming":{"backpressure":{"x":1}}}"#,
                "streaming.backpressure.x",
            ),
            (
                r#"{"streaming":{"monitoring":{"x":1}}}"#,
                "streaming.monitoring.x",
            ),
            (r#"{"streaming":{"limits":{"x":1}}}"#, "streaming.limits.x"),
            (
                r#"{"streaming":{"security":{"x":1}}}"#,
                "streaming.security.x",
            ),
            (r#"{"tls":{"x":1}}"#, "tls.x"),
            (r#"{"mcp":{"x":1}}"#, "mcp.x"),
        ] {
            assert_eq!(json_err(text), format!("unknown key \"{key}\""));
        }
    }

    #[test]
    fn unknown_feature_names_are_errors() {
        let e = json_err(r#"{"features":{"telepathy":true}}"#);
        assert!(
            e.starts_with("unknown key \"features.telepathy\": not a feature name"),
            "{e}"
        );
        assert!(e.contains("sse-streaming"), "{e}");
        assert_eq!(
            json_err(r#"{"features":{"sse-streaming":1}}"#),
            "\"features.sse-streaming\" must be true or false, got 1"
        );
        assert_eq!(
            json_err(r#"{"features":[]}"#),
            "\"features\" must be an object, got []"
        );
    }

    #[test]
    fn type_errors_name_the_key_and_show_the_value() {
        assert_eq!(
            json_err(r#"{"streaming":{"sse":{"heartbeat_secs":"x"}}}"#),
            "\"streaming.sse.heartbeat_secs\" must be a positive integer, got \"x\""
        );
        assert_eq!(
            json_err(r#"{"streaming":{"sse":{"heartbeat_secs":-1}}}"#),
            "\"streaming.sse.heartbeat_secs\" must be a positive integer, got -1"
        );
        assert_eq!(
            json_err(r#"{"streaming":{"sse":{"heartbeat_secs":1.5}}}"#),
            "\"streaming.sse.heartbeat_secs\" must be a positive integer, got 1.5"
        );
        assert_eq!(
            json_err(r#"{"streaming":{"limits":{"max_connections_per_ip":null}}}"#),
            "\"streaming.limits.max_connections_per_ip\" must be a non-negative integer, got null"
        );
        assert_eq!(
            json_err(r#"{"streaming":{"sse":{"enabled":"yes"}}}"#),
            "\"streaming.sse.enabled\" must be true or false, got \"yes\""
        );
        assert_eq!(
            json_err(r#"{"streaming":{"sse":true}}"#),
            "\"streaming.sse\" must be an object, got true"
        );
        assert_eq!(
            json_err(r#"{"streaming":{"security":{"tokens":["a",2]}}}"#),
            "\"streaming.security.tokens[1]\" must be a string, got 2"
        );
        assert_eq!(
            json_err(r#"{"streaming":{"security":{"cors_origins":"*"}}}"#),
            "\"streaming.security.cors_origins\" must be an array of strings, got \"*\""
        );
        assert_eq!(
            json_err(r#"{"streaming":{"security":{"jwt_secret":5}}}"#),
            "\"streaming.security.jwt_secret\" must be a string or null, got 5"
        );
        assert_eq!(
            json_err(r#"{"tls":{"cert":""}}"#),
            "\"tls.cert\" must be a file path or null, got \"\""
        );
        assert_eq!(
            json_err(r#"{"mcp":{"path":1}}"#),
            "\"mcp.path\" must be a string, got 1"
        );
        let long = format!(r#"{{"listen":"{}"}}"#, "a".repeat(200));
        let e = json_err(&long);
        assert!(e.ends_with("...") && e.len() < 150, "{e}");
    }

    #[test]
    fn listen_must_be_an_address() {
        assert_eq!(
            json_err(r#"{"listen":"nope"}"#),
            "\"listen\" must be an address like 127.0.0.1:8080, got \"nope\""
        );
        assert_eq!(
            json_err(r#"{"listen":8080}"#),
            "\"listen\" must be an address like 127.0.0.1:8080, got 8080"
        );
        assert_eq!(
            from_json(r#"{"listen":"[::1]:0"}"#).unwrap().listen,
            "[::1]:0".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn parse_listen_accepts_socket_addrs_and_localhost() {
        assert_eq!(
            parse_listen("127.0.0.1:0"),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(
            parse_listen("localhost:8081"),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        for bad in [
            "",
            "8080",
            "localhost",
            "localhost:",
            "localhost:+1",
            "localhost:70000",
            "example.com:80",
            "127.0.0.1",
        ] {
            assert_eq!(parse_listen(bad), None, "{bad}");
        }
    }

    #[test]
    fn slow_consumer_values() {
        assert_eq!(
            from_json(r#"{"streaming":{"backpressure":{"slow_consumer":"drop_oldest"}}}"#)
                .unwrap()
                .backpressure
                .slow_consumer,
            SlowConsumer::DropOldest
        );
        let e = json_err(r#"{"streaming":{"backpressure":{"slow_consumer":"conflate"}}}"#);
        assert!(
            e.starts_with("\"streaming.backpressure.slow_consumer\""),
            "{e}"
        );
        assert!(e.contains("not supported yet"), "{e}");
        assert_eq!(
            json_err(r#"{"streaming":{"backpressure":{"slow_consumer":"block"}}}"#),
            "\"streaming.backpressure.slow_consumer\" must be \"disconnect\" or \"drop_oldest\", got \"block\""
        );
        assert_eq!(SlowConsumer::DropOldest.name(), "drop_oldest");
        assert_eq!(SlowConsumer::Disconnect.name(), "disconnect");
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let e = json_err("{\n  \"listen\": \"x\",\n    oops\n}");
        assert!(e.starts_with("invalid JSON at line 3 column 5: "), "{e}");
        assert!(!e.ends_with("column 5"), "{e}");
        assert_eq!(json_err("[1]"), "the config must be a JSON object, got [1]");
        assert!(json_err("").starts_with("invalid JSON at line 1 column 0: "));
    }

    #[test]
    fn env_overrides_every_variable() {
        let mut c = Config::default();
        c.apply_env(env(&[
            ("SSE_ENABLED", "false"),
            ("WEBSOCKET_ENABLED", "0"),
            ("MAX_CONNECTIONS", "42"),
            ("STREAM_BUFFER_SIZE", "43"),
            ("PROCESSING_INTERVAL", "44"),
            ("STREAM_COMPRESSION", "FALSE"),
            ("CONNECTION_POOLING", "False"),
            ("AUTO_RECONNECTION", "0"),
            ("MONITORING_ENABLED", "false"),
            ("STREAM_AUTHENTICATION", "TRUE"),
            ("STREAM_RATE_LIMITING", "1"),
            ("MAX_REQUESTS_PER_MINUTE", "45"),
            ("CORS_ENABLED", "false"),
            ("MCP_STREAM_LISTEN", "127.0.0.1:0"),
            ("MCP_STREAM_TOKENS", " a , ,b,, c "),
            ("MCP_STREAM_JWT_SECRET", "sekrit"),
            ("MCP_STREAM_ADMIN_TOKEN", "admin"),
        ]))
        .unwrap();
        assert!(!c.sse.enabled);
        assert!(!c.websocket.enabled);
        assert_eq!(c.max_connections, 42);
        assert_eq!(c.real_time.buffer_size, 43);
        assert_eq!(c.real_time.processing_interval, 44);
        for f in [
            Feature::StreamCompression,
            Feature::ConnectionPooling,
            Feature::AutoReconnection,
            Feature::StreamMonitoring,
        ] {
            assert!(!c.features.is_enabled(f), "{f}");
        }
        assert!(c.features.is_enabled(Feature::ErrorRecovery));
        assert!(c.security.authentication);
        assert!(c.security.rate_limiting);
        assert_eq!(c.security.max_requests_per_minute, 45);
        assert!(!c.security.cors_enabled);
        assert_eq!(c.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert_eq!(c.security.tokens, vec!["a", "b", "c"]);
        assert_eq!(c.security.jwt_secret.as_deref(), Some("sekrit"));
        assert_eq!(c.security.admin_token.as_deref(), Some("admin"));
        c.validate().unwrap();

        // And the other direction for the booleans.
        let mut c = Config {
            features: FeatureSet::none(),
            ..Config::default()
        };
        c.sse.enabled = false;
        c.apply_env(env(&[
            ("SSE_ENABLED", "True"),
            ("STREAM_COMPRESSION", "1"),
            ("MONITORING_ENABLED", "true"),
        ]))
        .unwrap();
        assert!(c.sse.enabled);
        assert!(c.features.is_enabled(Feature::StreamCompression));
        assert!(c.features.is_enabled(Feature::StreamMonitoring));
        assert!(!c.features.is_enabled(Feature::ConnectionPooling));
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let mut c = Config::default();
        c.security.tokens = vec!["keep".into()];
        c.security.jwt_secret = Some("keep".into());
        let pairs: Vec<(&str, &str)> = ENV_VARS.iter().map(|k| (*k, "")).collect();
        let before = c.clone();
        c.apply_env(env(&pairs)).unwrap();
        assert_eq!(c, before);
        c.apply_env(no_env).unwrap();
        assert_eq!(c, before);
    }

    #[test]
    fn bad_env_values_name_the_variable() {
        assert_eq!(
            env_err(&[("SSE_ENABLED", "yes")]),
            "environment variable SSE_ENABLED must be true, false, 1 or 0, got \"yes\""
        );
        for name in [
            "WEBSOCKET_ENABLED",
            "STREAM_COMPRESSION",
            "CONNECTION_POOLING",
            "AUTO_RECONNECTION",
            "MONITORING_ENABLED",
            "STREAM_AUTHENTICATION",
            "STREAM_RATE_LIMITING",
            "CORS_ENABLED",
        ] {
            let e = env_err(&[(name, "2")]);
            assert!(
                e.starts_with(&format!("environment variable {name} ")),
                "{e}"
            );
        }
        assert_eq!(
            env_err(&[("MAX_CONNECTIONS", "lots")]),
            "environment variable MAX_CONNECTIONS must be a positive integer, got \"lots\""
        );
        for name in [
            "STREAM_BUFFER_SIZE",
            "PROCESSING_INTERVAL",
            "MAX_REQUESTS_PER_MINUTE",
        ] {
            let e = env_err(&[(name, "-3")]);
            assert!(
                e.starts_with(&format!("environment variable {name} must be")),
                "{e}"
            );
        }
        assert_eq!(
            env_err(&[("MCP_STREAM_LISTEN", "nope")]),
            "environment variable MCP_STREAM_LISTEN must be an address like 127.0.0.1:8080, got \"nope\""
        );
    }

    #[test]
    fn validation_accepts_the_boundaries() {
        let mut c = Config::default();
        c.websocket.max_message_bytes = 16;
        c.backpressure.max_queue_bytes = 4096;
        c.limits.max_head_bytes = 256;
        c.limits.max_header_count = 8;
        c.websocket.message_history = 1_000_000;
        c.limits.drain_timeout_ms = 0;
        c.limits.max_connections_per_ip = 0;
        c.validate().unwrap();
        c.websocket.max_message_bytes = 67_108_864;
        c.backpressure.max_queue_bytes = 67_108_864;
        c.limits.max_head_bytes = 1_048_576;
        c.limits.max_header_count = 256;
        c.validate().unwrap();
    }

    #[test]
    fn validation_rejects_each_rule_naming_the_key() {
        type Edit = Box<dyn FnOnce(&mut Config)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|c| c.max_connections = 0), "\"max_connections\" must be between 1 and 4194304, got 0"),
            (Box::new(|c| c.max_connections = usize::MAX), "\"max_connections\" must be between 1 and 4194304, got 18446744073709551615"),
            (Box::new(|c| c.sse.max_connections = 0), "\"streaming.sse.max_connections\" must be between 1 and 4194304, got 0"),
            (Box::new(|c| c.sse.heartbeat_secs = 0), "\"streaming.sse.heartbeat_secs\" must be a positive integer, got 0"),
            (Box::new(|c| c.monitoring.interval_secs = 0), "\"streaming.monitoring.interval_secs\" must be between 1 and 31536000, got 0"),
            (Box::new(|c| c.monitoring.error_rate_percent = 101), "\"streaming.monitoring.error_rate_percent\" must be between 1 and 100, got 101"),
            (Box::new(|c| c.websocket.max_message_bytes = 15), "\"streaming.websocket.max_message_bytes\" must be between 16 and 67108864, got 15"),
            (Box::new(|c| c.websocket.max_message_bytes = 67_108_865), "\"streaming.websocket.max_message_bytes\" must be between 16 and 67108864, got 67108865"),
            (Box::new(|c| c.backpressure.max_queue_bytes = 4095), "\"streaming.backpressure.max_queue_bytes\" must be at least 4096, got 4095"),
            (Box::new(|c| c.backpressure.max_queue_bytes = 65535), "\"streaming.backpressure.max_queue_bytes\" (65535) must be at least \"streaming.websocket.max_message_bytes\" (65536)"),
            (Box::new(|c| c.limits.max_head_bytes = 255), "\"streaming.limits.max_head_bytes\" must be between 256 and 1048576, got 255"),
            (Box::new(|c| c.limits.max_head_bytes = 1_048_577), "\"streaming.limits.max_head_bytes\" must be between 256 and 1048576, got 1048577"),
            (Box::new(|c| c.limits.max_body_bytes = 0), "\"streaming.limits.max_body_bytes\" must be a positive integer, got 0"),
            (Box::new(|c| c.limits.head_timeout_ms = 0), "\"streaming.limits.head_timeout_ms\" must be a positive integer, got 0"),
            (Box::new(|c| c.limits.body_timeout_ms = 0), "\"streaming.limits.body_timeout_ms\" must be a positive integer, got 0"),
            (Box::new(|c| c.limits.idle_timeout_secs = 0), "\"streaming.limits.idle_timeout_secs\" must be a positive integer, got 0"),
            (Box::new(|c| c.limits.max_topics = 0), "\"streaming.limits.max_topics\" must be a positive integer, got 0"),
            (Box::new(|c| c.limits.max_header_count = 7), "\"streaming.limits.max_header_count\" must be between 8 and 256, got 7"),
            (Box::new(|c| c.limits.max_header_count = 257), "\"streaming.limits.max_header_count\" must be between 8 and 256, got 257"),
            (Box::new(|c| c.websocket.message_history = 1_000_001), "\"streaming.websocket.message_history\" must be at most 1000000, got 1000001"),
            (Box::new(|c| c.websocket.ping_interval_secs = 0), "\"streaming.websocket.ping_interval_secs\" must be a positive integer, got 0"),
            (Box::new(|c| c.websocket.pong_timeout_secs = 0), "\"streaming.websocket.pong_timeout_secs\" must be a positive integer, got 0"),
            (Box::new(|c| c.security.max_requests_per_minute = 0), "\"streaming.security.max_requests_per_minute\" must be a positive integer, got 0"),
            (Box::new(|c| c.mcp.session_idle_secs = 0), "\"mcp.session_idle_secs\" must be a positive integer, got 0"),
            (Box::new(|c| c.mcp.path = "mcp".into()), "\"mcp.path\" must start with '/', got \"mcp\""),
            (Box::new(|c| c.mcp.path = String::new()), "\"mcp.path\" must start with '/', got \"\""),
            (Box::new(|c| c.tls.cert = Some("/c".into())), "\"tls.cert\" is set but \"tls.key\" is not: set both or neither"),
            (Box::new(|c| c.tls.key = Some("/k".into())), "\"tls.key\" is set but \"tls.cert\" is not: set both or neither"),
            (Box::new(|c| c.security.cors_origins = vec!["*".into(), String::new()]), "\"streaming.security.cors_origins[1]\" must be a non-empty string"),
            (Box::new(|c| c.security.allowed_origins = vec![String::new()]), "\"streaming.security.allowed_origins[0]\" must be a non-empty string"),
            (Box::new(|c| c.security.tokens = vec![String::new()]), "\"streaming.security.tokens[0]\" must be a non-empty string"),
            (Box::new(|c| c.security.jwt_secret = Some(String::new())), "\"streaming.security.jwt_secret\" must not be empty (use null for none)"),
            (Box::new(|c| c.security.admin_token = Some(String::new())), "\"streaming.security.admin_token\" must not be empty (use null for none)"),
        ];
        for (edit, want) in cases {
            assert_eq!(invalid(edit), want);
        }
    }

    #[test]
    fn effective_features_combine_sections_and_toggles() {
        let c = Config::default();
        assert_eq!(c.effective_features(), FeatureSet::default());

        let mut c = Config::default();
        c.sse.enabled = false;
        c.websocket.enabled = false;
        c.mcp.enabled = false;
        c.real_time.enabled = false;
        let fs = c.effective_features();
        for f in [
            Feature::SseStreaming,
            Feature::WebsocketStreaming,
            Feature::McpTransport,
            Feature::RealTimeAnalytics,
        ] {
            assert!(!fs.is_enabled(f), "{f}");
        }
        assert!(fs.is_enabled(Feature::StreamCompression));
        // The configured set itself is untouched.
        assert!(c.features.is_enabled(Feature::SseStreaming));

        // Section enabled but feature off: still off (AND).
        let mut c = Config::default();
        c.features.set(Feature::SseStreaming, false);
        c.features.set(Feature::McpTransport, false);
        let fs = c.effective_features();
        assert!(!fs.is_enabled(Feature::SseStreaming));
        assert!(!fs.is_enabled(Feature::McpTransport));
        assert!(fs.is_enabled(Feature::WebsocketStreaming));

        // Either source turns authentication / rate limiting on.
        let mut c = Config::default();
        c.security.authentication = true;
        let fs = c.effective_features();
        assert!(fs.is_enabled(Feature::StreamAuthentication));
        assert!(!fs.is_enabled(Feature::StreamRateLimiting));
        let mut c = Config::default();
        c.security.rate_limiting = true;
        assert!(c
            .effective_features()
            .is_enabled(Feature::StreamRateLimiting));
        let mut c = Config::default();
        c.features.set(Feature::StreamAuthentication, true);
        c.features.set(Feature::StreamRateLimiting, true);
        let fs = c.effective_features();
        assert!(fs.is_enabled(Feature::StreamAuthentication));
        assert!(fs.is_enabled(Feature::StreamRateLimiting));
    }

    #[test]
    fn load_layers_defaults_file_env_flags() {
        let p = temp_file(
            "layers",
            r#"{"listen":"127.0.0.1:1111","max_connections":5,
                "streaming":{"sse":{"heartbeat_secs":9},"real_time":{"buffer_size":77}}}"#,
        );
        // File only.
        let c = Config::load(Some(&p), no_env, None).unwrap();
        assert_eq!(c.listen.port(), 1111);
        assert_eq!(c.max_connections, 5);
        assert_eq!(c.sse.heartbeat_secs, 9);
        assert_eq!(c.real_time.buffer_size, 77);
        // Env beats file.
        let e = env(&[
            ("MCP_STREAM_LISTEN", "127.0.0.1:2222"),
            ("MAX_CONNECTIONS", "6"),
        ]);
        let c = Config::load(Some(&p), &e, None).unwrap();
        assert_eq!(c.listen.port(), 2222);
        assert_eq!(c.max_connections, 6);
        assert_eq!(c.sse.heartbeat_secs, 9);
        // Flag beats env.
        let c = Config::load(Some(&p), &e, Some("127.0.0.1:3333".parse().unwrap())).unwrap();
        assert_eq!(c.listen.port(), 3333);
        assert_eq!(c.max_connections, 6);
        // No file: defaults.
        let c = Config::load(None, no_env, None).unwrap();
        assert_eq!(c, Config::default());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn load_with_applies_every_override_then_validates() {
        let flags = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            mcp_stdio: Some("python srv.py".into()),
        };
        let c = Config::load_with(None, no_env, &flags).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert!(c.tls.is_enabled());
        assert_eq!(c.mcp.stdio, Some(StdioCommand::shell("python srv.py")));
        // A cert from the flags without any key anywhere fails validation.
        let only_cert = Overrides {
            tls_cert: Some("/c.pem".into()),
            ..Overrides::default()
        };
        let e = Config::load_with(None, no_env, &only_cert).unwrap_err();
        assert!(e.to_string().starts_with("\"tls.cert\" is set"), "{e}");
        // ...but a key from the file completes it.
        let p = temp_file("tlskey", r#"{"tls":{"key":"/k.pem"}}"#);
        let c = Config::load_with(Some(&p), no_env, &only_cert).unwrap();
        assert!(c.tls.is_enabled());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn load_validates_after_env() {
        let e = Config::load(None, env(&[("MAX_CONNECTIONS", "0")]), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"max_connections\" must be between 1 and 4194304, got 0"
        );
        assert_eq!(e.message(), e.0);
    }

    #[test]
    fn load_file_errors_name_the_file() {
        let missing = std::env::temp_dir().join("mcp-stream-definitely-missing/config.json");
        let e = Config::load(Some(&missing), no_env, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot read config file {}: No such file or directory",
                missing.display()
            )
        );

        let p = temp_file("badjson", "{\n  \"listen\": \"x\",\n    oops\n}");
        let e = Config::load(Some(&p), no_env, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config file {}: invalid JSON at line 3 column 5: ",
                p.display()
            )),
            "{e}"
        );
        std::fs::remove_file(&p).unwrap();

        let p = temp_file("badkey", r#"{"streaming":{"sse":{"foo":1}}}"#);
        let e = Config::load(Some(&p), no_env, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "config file {}: unknown key \"streaming.sse.foo\"",
                p.display()
            )
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn config_error_is_an_error() {
        let e: Box<dyn std::error::Error> = Box::new(ConfigError("x y".into()));
        assert_eq!(e.to_string(), "x y");
    }
}
