//! Command-line parsing (hand-written): the grammar of CONTRACT.md ("Command line") turned into a
//! [`Command`], the usage text, and the one-line [`UsageError`] that `main` prints before exiting 2.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use log::LevelFilter;

use crate::config::{parse_listen, Overrides};
use crate::features::Feature;

/// The help text printed by `--help`.
pub const USAGE: &str = "\
mcp-stream: a single-threaded streaming server (Server-Sent Events, WebSocket, MCP) over one pub/sub hub

USAGE:
    mcp-stream [serve] [OPTIONS]
    mcp-stream features list|enable NAME|disable NAME [--server URL] [--token TOKEN]
    mcp-stream bench [OPTIONS]   (latency benchmark; mcp-stream bench --help)
    mcp-stream --help | --version

SERVE OPTIONS:
    --config FILE          JSON config file (every key optional; unknown keys are an error)
    --listen ADDR          address to bind, e.g. 127.0.0.1:8080 (port 0 takes a free port)
    --log-level LEVEL      error, warn, info, debug or trace (logs go to stderr)
    --tls-cert FILE        PEM certificate chain; serve HTTPS and WSS (needs --tls-key)
    --tls-key FILE         PEM private key (needs --tls-cert)
    --mcp-stdio \"CMD ARGS\" serve every MCP session by its own child process speaking MCP over stdio

FEATURES OPTIONS:
    --server URL           the running server's base URL (default http://127.0.0.1:8080)
    --token TOKEN          bearer token for the admin API
    NAME may carry a namespace prefix (global.stream-compression): the prefix is ignored.
    Features: sse-streaming, websocket-streaming, real-time-analytics, stream-compression,
    connection-pooling, auto-reconnection, error-recovery, stream-monitoring,
    stream-authentication, stream-rate-limiting, mcp-transport

COMMON OPTIONS:
    -h, --help             print this help
    -V, --version          print the version

Every option takes its value as `--option VALUE` or `--option=VALUE`.
Precedence: built-in defaults < --config file < environment variables < command-line options.
Environment: SSE_ENABLED, WEBSOCKET_ENABLED, MAX_CONNECTIONS, STREAM_BUFFER_SIZE, PROCESSING_INTERVAL,
    STREAM_COMPRESSION, CONNECTION_POOLING, AUTO_RECONNECTION, MONITORING_ENABLED,
    STREAM_AUTHENTICATION, STREAM_RATE_LIMITING, MAX_REQUESTS_PER_MINUTE, CORS_ENABLED,
    MCP_STREAM_LISTEN, MCP_STREAM_TOKENS (comma list), MCP_STREAM_JWT_SECRET, MCP_STREAM_ADMIN_TOKEN.
    Booleans accept true/false/1/0.
";

/// The default `--server` of `features`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the server (also what no arguments at all mean).
    Serve(ServeArgs),
    /// Talk to a running server's admin API.
    Features {
        /// What to do.
        action: FeaturesAction,
        /// Base URL of the server (default [`DEFAULT_SERVER`]).
        server: String,
        /// Bearer token for the admin API, if given.
        token: Option<String>,
    },
    /// The latency benchmark; everything after `bench`, unparsed.
    Bench(Vec<String>),
    /// Print this text on stdout and exit 0.
    Help(String),
    /// Print [`version_text`] on stdout and exit 0.
    Version,
}

/// Options of `serve`; `None` means "not given on the command line".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--log-level LEVEL`.
    pub log_level: Option<LevelFilter>,
    /// `--tls-cert FILE`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`.
    pub tls_key: Option<PathBuf>,
    /// `--mcp-stdio "COMMAND ARGS"`, as given.
    pub mcp_stdio: Option<String>,
}

impl ServeArgs {
    /// The options that override configuration keys, for [`crate::config::Config::load_with`].
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            mcp_stdio: self.mcp_stdio.clone(),
        }
    }
}

/// `features list|enable NAME|disable NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeaturesAction {
    /// `list`.
    List,
    /// `enable NAME`; NAME as given (it may carry a namespace prefix), known to [`Feature::from_name`].
    Enable(String),
    /// `disable NAME`; NAME as given, known to [`Feature::from_name`].
    Disable(String),
}

/// A command-line mistake; `Display` is the one-line reason (`main` prints `mcp-stream: <reason>`
/// to stderr and exits 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The `--version` line: `mcp-stream <version>`.
pub fn version_text() -> String {
    format!("mcp-stream {}", env!("CARGO_PKG_VERSION"))
}

fn usage<T>(msg: String) -> Result<T, UsageError> {
    Err(UsageError(msg))
}

/// Parses the arguments (without argv\[0\]).
///
/// `bench` as the first argument takes everything after it unparsed. Otherwise `-h`/`--help` or
/// `-V`/`--version` anywhere wins (the first one seen), before any other check.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, UsageError> {
    let args: Vec<String> = args.into_iter().collect();
    if args.first().map(String::as_str) == Some("bench") {
        return Ok(Command::Bench(args[1..].to_vec()));
    }
    for a in &args {
        match a.as_str() {
            "-h" | "--help" => return Ok(Command::Help(USAGE.to_string())),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
    }
    match args.first().map(String::as_str) {
        None => Ok(Command::Serve(ServeArgs::default())),
        Some("serve") => parse_serve(&args[1..]).map(Command::Serve),
        Some("features") => parse_features(&args[1..]),
        Some("help") if args.len() == 1 => Ok(Command::Help(USAGE.to_string())),
        Some(a) if !a.starts_with('-') => usage(format!(
            "unknown command \"{a}\" (expected serve, features or bench; see --help)"
        )),
        Some(_) => parse_serve(&args).map(Command::Serve),
    }
}

/// Walks options, handing out their values.
struct Cursor<'a> {
    args: &'a [String],
    pos: usize,
}

/// One argument: an option with its inline `=value`, or a positional.
enum Arg<'a> {
    Opt(&'a str, Option<&'a str>),
    Positional(&'a str),
}

impl<'a> Cursor<'a> {
    fn new(args: &'a [String]) -> Cursor<'a> {
        Cursor { args, pos: 0 }
    }

    fn next_arg(&mut self) -> Option<Arg<'a>> {
        let a = self.args.get(self.pos)?.as_str();
        self.pos += 1;
        if let Some(body) = a.strip_prefix("--") {
            if let Some(eq) = body.find('=') {
                return Some(Arg::Opt(&a[..eq + 2], Some(&body[eq + 1..])));
            }
            return Some(Arg::Opt(a, None));
        }
        if a.starts_with('-') && a.len() > 1 {
            return Some(Arg::Opt(a, None));
        }
        Some(Arg::Positional(a))
    }

    /// The value of option `flag`: inline (`--flag=v`) or the next argument, which must not itself
    /// look like an option (`--...`). Empty values are refused.
    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, UsageError> {
        let v = match inline {
            Some(v) => v,
            None => match self.args.get(self.pos) {
                Some(v) if !v.starts_with("--") => {
                    self.pos += 1;
                    v.as_str()
                }
                _ => return usage(format!("option {flag} needs a value")),
            },
        };
        if v.trim().is_empty() {
            return usage(format!("option {flag} needs a value"));
        }
        Ok(v)
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, flag: &str) -> Result<(), UsageError> {
    if slot.is_some() {
        return usage(format!("option {flag} given more than once"));
    }
    *slot = Some(v);
    Ok(())
}

fn parse_log_level(v: &str) -> Option<LevelFilter> {
    match v.to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

fn parse_serve(args: &[String]) -> Result<ServeArgs, UsageError> {
    let mut out = ServeArgs::default();
    let mut cur = Cursor::new(args);
    while let Some(arg) = cur.next_arg() {
        let (flag, inline) = match arg {
            Arg::Opt(f, v) => (f, v),
            Arg::Positional(p) => return usage(format!("unexpected argument \"{p}\"")),
        };
        match flag {
            "--config" => {
                let v = cur.value(flag, inline)?;
                set_once(&mut out.config, PathBuf::from(v), flag)?;
            }
            "--listen" => {
                let v = cur.value(flag, inline)?;
                let Some(a) = parse_listen(v) else {
                    return usage(format!(
                        "invalid --listen address \"{v}\" (expected an address like 127.0.0.1:8080)"
                    ));
                };
                set_once(&mut out.listen, a, flag)?;
            }
            "--log-level" => {
                let v = cur.value(flag, inline)?;
                let Some(l) = parse_log_level(v) else {
                    return usage(format!(
                        "invalid --log-level \"{v}\" (expected error, warn, info, debug or trace)"
                    ));
                };
                set_once(&mut out.log_level, l, flag)?;
            }
            "--tls-cert" => {
                let v = cur.value(flag, inline)?;
                set_once(&mut out.tls_cert, PathBuf::from(v), flag)?;
            }
            "--tls-key" => {
                let v = cur.value(flag, inline)?;
                set_once(&mut out.tls_key, PathBuf::from(v), flag)?;
            }
            "--mcp-stdio" => {
                let v = cur.value(flag, inline)?;
                set_once(&mut out.mcp_stdio, v.to_string(), flag)?;
            }
            _ => return usage(format!("unknown option \"{flag}\" (see --help)")),
        }
    }
    Ok(out)
}

fn parse_features(args: &[String]) -> Result<Command, UsageError> {
    let mut server: Option<String> = None;
    let mut token: Option<String> = None;
    let mut positionals: Vec<&str> = Vec::new();
    let mut cur = Cursor::new(args);
    while let Some(arg) = cur.next_arg() {
        let (flag, inline) = match arg {
            Arg::Opt(f, v) => (f, v),
            Arg::Positional(p) => {
                positionals.push(p);
                continue;
            }
        };
        match flag {
            "--server" => {
                let v = cur.value(flag, inline)?;
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return usage(format!(
                        "invalid --server URL \"{v}\" (expected http://HOST:PORT or https://HOST:PORT)"
                    ));
                }
                set_once(&mut server, v.to_string(), flag)?;
            }
            "--token" => {
                let v = cur.value(flag, inline)?;
                set_once(&mut token, v.to_string(), flag)?;
            }
            _ => {
                return usage(format!(
                    "unknown option \"{flag}\" for features (see --help)"
                ))
            }
        }
    }
    let mut pos = positionals.into_iter();
    let action = match pos.next() {
        None => {
            return usage("features needs an action: list, enable NAME or disable NAME".to_string())
        }
        Some("list") => FeaturesAction::List,
        Some(verb @ ("enable" | "disable")) => {
            let Some(name) = pos.next() else {
                return usage(format!("features {verb} needs a feature NAME"));
            };
            if Feature::from_name(name).is_none() {
                return usage(format!("unknown feature \"{name}\""));
            }
            if verb == "enable" {
                FeaturesAction::Enable(name.to_string())
            } else {
                FeaturesAction::Disable(name.to_string())
            }
        }
        Some(other) => {
            return usage(format!(
                "unknown features action \"{other}\" (expected list, enable or disable)"
            ))
        }
    };
    if let Some(extra) = pos.next() {
        return usage(format!("unexpected argument \"{extra}\""));
    }
    Ok(Command::Features {
        action,
        server: server.unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match p(args) {
            Ok(Command::Serve(s)) => s,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    fn fail(args: &[&str]) -> String {
        match p(args) {
            Err(e) => e.to_string(),
            Ok(c) => panic!("{args:?} parsed as {c:?}"),
        }
    }

    #[test]
    fn no_args_serves_with_everything_unset() {
        assert_eq!(p(&[]).unwrap(), Command::Serve(ServeArgs::default()));
        assert_eq!(serve(&["serve"]), ServeArgs::default());
    }

    #[test]
    fn every_serve_option_both_spellings() {
        let want = ServeArgs {
            config: Some(PathBuf::from("/etc/m.json")),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            log_level: Some(LevelFilter::Debug),
            tls_cert: Some(PathBuf::from("c.pem")),
            tls_key: Some(PathBuf::from("k.pem")),
            mcp_stdio: Some("npx -y server --flag=1".to_string()),
        };
        let spaced = [
            "--config",
            "/etc/m.json",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "debug",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--mcp-stdio",
            "npx -y server --flag=1",
        ];
        assert_eq!(serve(&spaced), want);
        let mut with_serve = vec!["serve"];
        with_serve.extend_from_slice(&spaced);
        assert_eq!(serve(&with_serve), want);
        let equals = [
            "serve",
            "--config=/etc/m.json",
            "--listen=127.0.0.1:0",
            "--log-level=DEBUG",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
            "--mcp-stdio=npx -y server --flag=1",
        ];
        assert_eq!(serve(&equals), want);
    }

    #[test]
    fn log_levels() {
        for (s, l) in [
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("Trace", LevelFilter::Trace),
        ] {
            assert_eq!(serve(&["--log-level", s]).log_level, Some(l));
        }
        assert_eq!(
            fail(&["--log-level", "loud"]),
            "invalid --log-level \"loud\" (expected error, warn, info, debug or trace)"
        );
        assert!(fail(&["--log-level=off"]).starts_with("invalid --log-level \"off\""));
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            serve(&["--listen", "[::1]:9000"]).listen,
            Some("[::1]:9000".parse().unwrap())
        );
        assert_eq!(
            serve(&["--listen=localhost:9001"]).listen,
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(
            fail(&["--listen", "nope"]),
            "invalid --listen address \"nope\" (expected an address like 127.0.0.1:8080)"
        );
        assert!(fail(&["serve", "--listen=8080"]).contains("\"8080\""));
    }

    #[test]
    fn bad_flags_missing_values_and_stray_args() {
        assert_eq!(
            fail(&["--bogus"]),
            "unknown option \"--bogus\" (see --help)"
        );
        assert_eq!(
            fail(&["--bogus=1"]),
            "unknown option \"--bogus\" (see --help)"
        );
        assert_eq!(fail(&["serve", "-x"]), "unknown option \"-x\" (see --help)");
        assert_eq!(fail(&["--config"]), "option --config needs a value");
        assert_eq!(fail(&["--config="]), "option --config needs a value");
        assert_eq!(
            fail(&["--config", "--listen", "127.0.0.1:1"]),
            "option --config needs a value"
        );
        assert_eq!(
            fail(&["--mcp-stdio", "  "]),
            "option --mcp-stdio needs a value"
        );
        assert_eq!(fail(&["serve", "extra"]), "unexpected argument \"extra\"");
        assert_eq!(
            fail(&["--listen", "127.0.0.1:1", "stray"]),
            "unexpected argument \"stray\""
        );
        assert_eq!(
            fail(&["start"]),
            "unknown command \"start\" (expected serve, features or bench; see --help)"
        );
        assert_eq!(
            fail(&["--listen", "127.0.0.1:1", "--listen=127.0.0.1:2"]),
            "option --listen given more than once"
        );
        // A value that merely starts with one dash is a value.
        assert_eq!(serve(&["--config", "-"]).config, Some(PathBuf::from("-")));
    }

    #[test]
    fn help_and_version_anywhere() {
        for args in [
            &["--help"][..],
            &["-h"],
            &["help"],
            &["serve", "--help"],
            &["--bogus", "-h"],
            &["--listen", "nope", "--help"],
            &["features", "enable", "nonsense", "--help"],
        ] {
            assert_eq!(
                p(args).unwrap(),
                Command::Help(USAGE.to_string()),
                "{args:?}"
            );
        }
        for args in [&["--version"][..], &["-V"], &["serve", "--bogus", "-V"]] {
            assert_eq!(p(args).unwrap(), Command::Version, "{args:?}");
        }
        // The first one seen wins.
        assert_eq!(p(&["-V", "--help"]).unwrap(), Command::Version);
        assert_eq!(
            p(&["-h", "--version"]).unwrap(),
            Command::Help(USAGE.to_string())
        );
        assert_eq!(
            version_text(),
            format!("mcp-stream {}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn usage_mentions_every_command_and_option() {
        for word in [
            "serve",
            "features",
            "bench",
            "--config",
            "--listen",
            "--log-level",
            "--tls-cert",
            "--tls-key",
            "--mcp-stdio",
            "--server",
            "--token",
            "--help",
            "--version",
            "MCP_STREAM_ADMIN_TOKEN",
        ] {
            assert!(USAGE.contains(word), "{word}");
        }
        for f in Feature::ALL {
            assert!(USAGE.contains(f.name()), "{f}");
        }
    }

    #[test]
    fn bench_takes_the_rest_unparsed() {
        assert_eq!(p(&["bench"]).unwrap(), Command::Bench(vec![]));
        assert_eq!(
            p(&["bench", "--clients", "10", "--help", "x"]).unwrap(),
            Command::Bench(vec![
                "--clients".into(),
                "10".into(),
                "--help".into(),
                "x".into()
            ])
        );
        // Only as the command word.
        assert!(fail(&["--listen", "127.0.0.1:1", "bench"]).contains("\"bench\""));
    }

    #[test]
    fn features_commands() {
        assert_eq!(
            p(&["features", "list"]).unwrap(),
            Command::Features {
                action: FeaturesAction::List,
                server: DEFAULT_SERVER.to_string(),
                token: None
            }
        );
        assert_eq!(DEFAULT_SERVER, "http://127.0.0.1:8080");
        assert_eq!(
            p(&[
                "features",
                "enable",
                "uiforge-mcp.sse-streaming",
                "--server",
                "http://10.0.0.1:9",
                "--token=t0k"
            ])
            .unwrap(),
            Command::Features {
                action: FeaturesAction::Enable("uiforge-mcp.sse-streaming".into()),
                server: "http://10.0.0.1:9".into(),
                token: Some("t0k".into())
            }
        );
        assert_eq!(
            p(&[
                "features",
                "--token",
                "t",
                "disable",
                "global.stream-compression"
            ])
            .unwrap(),
            Command::Features {
                action: FeaturesAction::Disable("global.stream-compression".into()),
                server: DEFAULT_SERVER.into(),
                token: Some("t".into())
            }
        );
        assert_eq!(
            p(&["features", "list", "--server=https://h:1"]).unwrap(),
            Command::Features {
                action: FeaturesAction::List,
                server: "https://h:1".into(),
                token: None
            }
        );
    }

    #[test]
    fn features_mistakes() {
        assert_eq!(
            fail(&["features"]),
            "features needs an action: list, enable NAME or disable NAME"
        );
        assert_eq!(
            fail(&["features", "toggle", "x"]),
            "unknown features action \"toggle\" (expected list, enable or disable)"
        );
        assert_eq!(
            fail(&["features", "enable"]),
            "features enable needs a feature NAME"
        );
        assert_eq!(
            fail(&["features", "disable"]),
            "features disable needs a feature NAME"
        );
        assert_eq!(
            fail(&["features", "enable", "warp-drive"]),
            "unknown feature \"warp-drive\""
        );
        assert_eq!(
            fail(&["features", "disable", "ns.warp"]),
            "unknown feature \"ns.warp\""
        );
        assert_eq!(
            fail(&["features", "list", "extra"]),
            "unexpected argument \"extra\""
        );
        assert_eq!(
            fail(&["features", "enable", "mcp-transport", "sse-streaming"]),
            "unexpected argument \"sse-streaming\""
        );
        assert_eq!(
            fail(&["features", "list", "--listen", "127.0.0.1:1"]),
            "unknown option \"--listen\" for features (see --help)"
        );
        assert_eq!(
            fail(&["features", "list", "--server"]),
            "option --server needs a value"
        );
        assert_eq!(
            fail(&["features", "list", "--token="]),
            "option --token needs a value"
        );
        assert_eq!(
            fail(&["features", "list", "--server", "127.0.0.1:8080"]),
            "invalid --server URL \"127.0.0.1:8080\" (expected http://HOST:PORT or https://HOST:PORT)"
        );
        assert_eq!(
            fail(&["features", "list", "--token", "a", "--token", "b"]),
            "option --token given more than once"
        );
    }

    #[test]
    fn serve_args_become_config_overrides() {
        let s = serve(&[
            "--listen=127.0.0.1:5",
            "--tls-cert=c",
            "--tls-key=k",
            "--mcp-stdio=cmd a",
            "--config=f",
            "--log-level=warn",
        ]);
        assert_eq!(
            s.overrides(),
            Overrides {
                listen: Some("127.0.0.1:5".parse().unwrap()),
                tls_cert: Some("c".into()),
                tls_key: Some("k".into()),
                mcp_stdio: Some("cmd a".into())
            }
        );
        assert_eq!(ServeArgs::default().overrides(), Overrides::default());
    }

    #[test]
    fn usage_error_is_an_error() {
        let e: Box<dyn std::error::Error> = Box::new(UsageError("bad thing".into()));
        assert_eq!(e.to_string(), "bad thing");
    }
}
