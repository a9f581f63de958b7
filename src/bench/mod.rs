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

/// Runs `mcp-stream bench ARGS`: 0 after a run, 1 when the run could not be made or stopped
/// before its first message, 2 for a bad option.
pub fn main(args: &[String]) -> ExitCode {
    if args.first().map(String::as_str) == Some("--baseline-writer") {
        return baseline::writer_main(); // the other half of --baseline (not in the help)
    }
    if args.first().map(String::as_str) == Some("plot") {
        return match plot_runs(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mcp-stream: bench plot: {e}");
                ExitCode::from(2)
            }
        };
    }
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
        if let Some(w) = outcome.saturation_warning() {
            eprintln!("mcp-stream bench: warning: {w}");
        }
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

/// `bench plot OUT.svg [--title TEXT] LABEL=RUN.json...`: the latency curves of earlier `--json`
/// runs in one plot.
fn plot_runs(args: &[String]) -> Result<(), String> {
    let usage = "usage: mcp-stream bench plot OUT.svg [--title TEXT] LABEL=RUN.json...";
    let (out, mut rest) = args.split_first().ok_or(usage)?;
    let mut title = "latency by percentile (from intended send time)".to_string();
    let mut series = Vec::new();
    while let Some((arg, tail)) = rest.split_first() {
        rest = tail;
        if arg == "--title" {
            let (t, tail) = rest.split_first().ok_or(usage)?;
            title.clone_from(t);
            rest = tail;
            continue;
        }
        let (label, file) = arg.split_once('=').ok_or(usage)?;
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let run: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        let points = run["percentiles"]
            .as_array()
            .ok_or_else(|| format!("{file}: no \"percentiles\" (not a bench --json run)"))?
            .iter()
            .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
            .collect();
        series.push(report::Series {
            label: label.to_string(),
            points,
        });
    }
    if series.is_empty() {
        return Err(usage.into());
    }
    std::fs::write(out, report::svg(&title, &series)).map_err(|e| format!("{out}: {e}"))
}
