//! `mcp-stream bench`: an open-loop latency benchmark of a pub/sub streaming server, on the same
//! mio foundation as the server (one thread, no async runtime).
//!
//! - [`options`]: the command line and the help text.
//! - [`wire`]: sans-IO codecs (requests, publishes, response heads, chunked bodies, SSE blocks,
//!   the stamp in each delivered copy).
//! - [`run`]: the mio driver: subscribers, the publisher, the intended-time schedule.
//! - [`baseline`]: `--baseline`, the same framed bytes written to the same sockets by the tool
//!   itself, with no server in between.
//! - [`report`]: the figures, and their text, JSON and SVG renderings.

pub mod baseline;
pub mod options;
pub mod report;
pub mod run;
pub mod wire;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use options::Parsed;

/// Runs `mcp-stream bench ARGS`: 0 after a run, 1 when the run could not be made, 2 for a bad
/// option.
pub fn main(args: &[String]) -> ExitCode {
    let o = match options::parse(args) {
        Ok(Parsed::Help) => {
            print!("{}", options::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(o)) => o,
        Err(e) => {
            eprintln!("mcp-stream: bench: {e}");
            return ExitCode::from(2);
        }
    };
    let progress = std::io::stderr().is_terminal();
    let outcome = match run::run(&o, progress) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("mcp-stream: bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &o.plot {
        let title = format!(
            "{} · {} subscribers ({}) · {} msg/s · {} B",
            if o.baseline {
                "baseline"
            } else {
                o.url.as_str()
            },
            o.connections,
            o.transport.name(),
            o.rate,
            o.payload
        );
        let series = [
            report::Series {
                label: "from intended send".into(),
                points: report::curve(&outcome.latency),
            },
            report::Series {
                label: "from actual send".into(),
                points: report::curve(&outcome.from_send),
            },
        ];
        if let Err(e) = std::fs::write(path, report::svg(&title, &series)) {
            eprintln!("mcp-stream: bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let text = if o.json {
        format!("{}\n", report::to_json(&o, &outcome))
    } else {
        report::to_text(&o, &outcome)
    };
    let mut stdout = std::io::stdout();
    if stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
