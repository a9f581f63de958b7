//! The `mcp-stream` command: parse the command line, load the configuration, set up logging on
//! stderr, and run the server until a signal drains it.

#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use mcp_stream::admin_client;
use mcp_stream::cli::{self, Command, FeaturesAction, ServeArgs};
use mcp_stream::config::Config;
use mcp_stream::Server;

mod bench;

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Serve(args)) => serve(&args),
        Ok(Command::Help(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("{}", cli::version_text());
            ExitCode::SUCCESS
        }
        Ok(Command::Features {
            action,
            server,
            token,
        }) => features(&action, &server, token),
        Ok(Command::Bench(args)) => bench::main(&args),
        Err(e) => usage_error(&e.to_string()),
    }
}

/// `features list|enable|disable`: one request to the server's admin API; prints each feature as
/// `NAME on|off`. The token is `--token`, else `MCP_STREAM_ADMIN_TOKEN`. Exits 1 when the
/// server cannot be reached or refuses.
fn features(action: &FeaturesAction, server: &str, token: Option<String>) -> ExitCode {
    let token = token.or_else(|| std::env::var("MCP_STREAM_ADMIN_TOKEN").ok());
    let (method, path, body) = match action {
        FeaturesAction::List => ("GET", "/admin/features".to_string(), None),
        FeaturesAction::Enable(name) | FeaturesAction::Disable(name) => (
            "PUT",
            format!("/admin/features/{name}"),
            Some(serde_json::json!({"enabled": matches!(action, FeaturesAction::Enable(_))})),
        ),
    };
    match admin_client::request(server, method, &path, body.as_ref(), token.as_deref()) {
        Ok((200, answer)) => {
            let one = answer
                .get("feature")
                .and_then(|f| f.as_str())
                .map(|f| (f, &answer["enabled"]));
            let lines: Vec<(&str, &serde_json::Value)> = match one {
                Some(pair) => vec![pair],
                None => answer["features"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
                    .unwrap_or_default(),
            };
            for (name, on) in lines {
                println!("{name} {}", if on == true { "on" } else { "off" });
            }
            ExitCode::SUCCESS
        }
        Ok((status, answer)) => {
            let reason = answer["error"].as_str().unwrap_or("no reason given");
            eprintln!("mcp-stream: the server answered {status}: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mcp-stream: cannot reach {server}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a one-line reason and exits 2, as for every bad flag or config.
fn usage_error(reason: &str) -> ExitCode {
    eprintln!("mcp-stream: {reason}");
    ExitCode::from(2)
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match Config::load_with(
        args.config.as_deref(),
        |key| std::env::var(key).ok(),
        &args.overrides(),
    ) {
        Ok(config) => config,
        Err(e) => return usage_error(&e.to_string()),
    };
    let tls = config.tls.is_enabled();
    if tls && !cfg!(feature = "tls") {
        return usage_error(
            "TLS is configured (tls.cert, tls.key) but this build has no TLS: rebuild with the `tls` feature",
        );
    }
    let level = args.log_level.unwrap_or(log::LevelFilter::Info);
    if let Err(e) = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_utc_timestamps()
        .init()
    {
        eprintln!("mcp-stream: cannot set up logging: {e}");
    }
    if let Some(stdio) = &config.mcp.stdio {
        log::info!(
            "MCP gateway: every session is served by `{}`",
            stdio.display
        );
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        // A certificate or key that cannot be loaded: the error names the file.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return usage_error(&e.to_string())
        }
        Err(e) => {
            eprintln!("mcp-stream: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Exactly one line on stdout, flushed, so that a parent can read the address; printed
    // once SIGTERM already means a graceful drain.
    let scheme = if tls { "https" } else { "http" };
    let ready = |addr| {
        let mut stdout = std::io::stdout();
        if writeln!(stdout, "listening on {scheme}://{addr}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            log::warn!("stdout is closed; serving anyway");
        }
        log::info!("serving on {addr}");
    };
    match server.run(ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("server stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
