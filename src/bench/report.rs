//! What a run measured, and its three renderings: the human summary, one JSON object, and an
//! SVG percentile plot (latency against percentile on a log "nines" axis, as HdrHistogram's
//! plots draw it), written by hand.

use std::fmt::Write as _;
use std::ops::Sub;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::options::Options;

/// The server's resident memory at three moments, in KiB; `None` where it could not be read
/// (the process had gone, or the run never settled).
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    /// Before any subscriber connected.
    pub before: u64,
    /// With every subscriber connected and idle.
    pub connected: Option<u64>,
    /// After the last message (before the connections close).
    pub end: Option<u64>,
}

/// Everything one run measured. Latencies are in nanoseconds.
#[derive(Debug)]
pub struct Outcome {
    /// Subscribers that connected (and joined).
    pub connected: usize,
    /// Of them, those still connected when publishing started: their copies are expected.
    pub counted: usize,
    /// Subscribers that did not.
    pub connect_failures: usize,
    /// Why the first of them failed.
    pub first_connect_failure: Option<String>,
    /// Seconds from the first connect to the last subscriber ready.
    pub connect_secs: f64,
    /// Warm-up messages sent (not recorded).
    pub warmup_sent: u64,
    /// Measured messages sent.
    pub sent: u64,
    /// Publishes the server acknowledged (warm-up included).
    pub acked: u64,
    /// Publishes the server refused (warm-up included).
    pub publish_failures: u64,
    /// The first refusal.
    pub first_publish_failure: Option<String>,
    /// Copies that should have arrived: connected subscribers × measured messages sent.
    pub expected: u64,
    /// Distinct measured copies that arrived.
    pub delivered: u64,
    /// Copies that arrived more than once.
    pub duplicates: u64,
    /// Copies older than one the same subscriber had already had.
    pub reordered: u64,
    /// Events the server said it dropped (`drop_oldest` notices).
    pub server_dropped: u64,
    /// Subscribers whose connection ended during the run.
    pub disconnected: usize,
    /// Of them, `--stalled` ones.
    pub stalled_disconnected: usize,
    /// How busy the tool's own loop was from the first message on: the share of wall time
    /// spent outside `poll`, in percent.
    pub tool_busy_percent: Option<f64>,
    /// Latency of every delivered copy from its message's intended send time.
    pub latency: Histogram<u64>,
    /// The same from the actual send time.
    pub from_send: Histogram<u64>,
    /// How late the publisher sent each message (actual minus intended).
    pub slip: Histogram<u64>,
    /// Seconds from the first measured message's intended time to the last copy.
    pub window_secs: f64,
    /// Seconds of the whole run.
    pub elapsed_secs: f64,
    /// Why the run stopped before its end, if it did.
    pub stopped_early: Option<String>,
    /// The server's RSS, with `--pid`.
    pub rss: Option<Rss>,
}

impl Outcome {
    /// Expected copies that never arrived.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }

    /// Copies delivered per second of the measured window.
    pub fn rate(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.delivered as f64 / self.window_secs
        } else {
            0.0
        }
    }
}

/// A new latency histogram for a run bounded by `duration`: 1 ns to `duration` plus a second,
/// three significant digits. No latency measured in such a run can pass that, so nothing is
/// clamped.
pub fn histogram(duration: std::time::Duration) -> Histogram<u64> {
    let high = (duration.as_nanos() as u64)
        .saturating_add(1_000_000_000)
        .max(2);
    Histogram::new_with_bounds(1, high, 3).expect("valid bounds")
}

/// Above this share of busy time, the tool's loop rather than the server may set the figures.
pub const BUSY_WARNING_PERCENT: f64 = 80.0;
/// Above this publisher slip at p99 (ns), the same.
pub const SLIP_WARNING_NS: u64 = 1_000_000;

impl Outcome {
    /// Why the figures may be the tool's limit rather than the server's, if they may.
    pub fn saturation_warning(&self) -> Option<String> {
        let busy = self.tool_busy_percent.unwrap_or(0.0);
        let slip = (!self.slip.is_empty()).then(|| self.slip.value_at_quantile(0.99));
        if busy > BUSY_WARNING_PERCENT || slip.is_some_and(|s| s > SLIP_WARNING_NS) {
            Some(format!(
                "the tool's loop was busy {busy:.0}% of the time and the publisher slipped {:.3} ms at p99: \
                 these figures may be the tool's limit, not the server's (over {BUSY_WARNING_PERCENT:.0}% or {} ms)",
                slip.map_or(0.0, ms),
                SLIP_WARNING_NS as f64 / 1e6
            ))
        } else {
            None
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The quantiles every report gives, with their names.
const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p999", 0.999),
    ("max", 1.0),
];

fn quantiles_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let mut m = serde_json::Map::new();
    m.insert("min".into(), json!(ms(h.min())));
    for (name, q) in QUANTILES {
        m.insert(name.into(), json!(ms(h.value_at_quantile(q))));
    }
    m.insert("mean".into(), json!(h.mean() / 1e6));
    Value::Object(m)
}

/// The percentile curve of `h`: (quantile, milliseconds) points, ending at the maximum.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let last = 1.0 - 1.0 / h.len() as f64;
    let mut points: Vec<(f64, f64)> = h
        .iter_quantiles(4)
        .map(|v| (v.quantile_iterated_to(), ms(v.value_iterated_to())))
        .take_while(|(q, _)| *q < last)
        .collect();
    points.push((last.max(0.0), ms(h.max())));
    points
}

/// The JSON object of `--json`.
pub fn to_json(o: &Options, out: &Outcome) -> Value {
    let mut v = json!({
        "tool": "mcp-stream bench",
        "version": env!("CARGO_PKG_VERSION"),
        "target": if o.baseline { "baseline".to_string() } else { o.url.clone() },
        "baseline": o.baseline,
        "transport": o.transport.name(),
        "publisher": if o.baseline { "baseline" } else { o.publisher.name() },
        "connections": o.connections,
        "messages": o.messages,
        "rate": o.rate,
        "payload_bytes": o.payload,
        "topic": o.topic,
        "warmup_messages": out.warmup_sent,
        "connected": out.connected,
        "connect_failures": out.connect_failures,
        "first_connect_failure": out.first_connect_failure,
        "connect_secs": out.connect_secs,
        "sent": out.sent,
        "acknowledged": out.acked,
        "publish_failures": out.publish_failures,
        "first_publish_failure": out.first_publish_failure,
        "expected": out.expected,
        "delivered": out.delivered,
        "lost": out.lost(),
        "duplicates": out.duplicates,
        "reordered": out.reordered,
        "server_dropped": out.server_dropped,
        "disconnected": out.disconnected,
        "deliveries_per_sec": out.rate(),
        "window_secs": out.window_secs,
        "elapsed_secs": out.elapsed_secs,
        "stopped_early": out.stopped_early,
        "latency_ms": quantiles_json(&out.latency),
        "latency_from_send_ms": quantiles_json(&out.from_send),
        "publisher_slip_ms": quantiles_json(&out.slip),
        "rss_kib": out.rss.map(|r| json!({
            "before": r.before,
            "connected": r.connected,
            "end": r.end,
            "per_connection_bytes": per_connection_bytes(r, out.counted),
        })),
        "percentiles": curve(&out.latency).iter().map(|(q, v)| json!([q, v])).collect::<Vec<_>>(),
    });
    v["subscribers_counted"] = json!(out.counted);
    v["stalled_disconnected"] = json!(out.stalled_disconnected);
    v["tool_busy_percent"] = json!(out.tool_busy_percent);
    v["tool_saturation_warning"] = json!(out.saturation_warning());
    v
}

/// The server's growth per subscriber counted, from the reading taken with all of them
/// connected and idle; none without that reading.
fn per_connection_bytes(r: Rss, counted: usize) -> Option<f64> {
    let connected = r.connected?;
    (counted > 0).then(|| (connected as f64 - r.before as f64) * 1024.0 / counted as f64)
}

fn line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    let v = |q| ms(h.value_at_quantile(q));
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
        v(0.5),
        v(0.9),
        v(0.99),
        v(0.999),
        ms(h.max())
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The human summary.
pub fn to_text(o: &Options, out: &Outcome) -> String {
    let mut s = String::new();
    let target = if o.baseline {
        "baseline (no server: the tool writes the framed bytes itself)".to_string()
    } else {
        format!("{}, {} publisher", o.url, o.publisher.name())
    };
    let _ = writeln!(s, "mcp-stream bench: {target}");
    let row = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<17} {v}");
    };
    let mut subs = format!(
        "{} of {} connected over {} in {:.2} s (ramp {}/s)",
        out.connected,
        o.connections,
        o.transport.name(),
        out.connect_secs,
        o.ramp
    );
    if let Some(f) = &out.first_connect_failure {
        let _ = write!(subs, "; {} failed, first: {f}", out.connect_failures);
    }
    row(&mut s, "subscribers", subs);
    row(
        &mut s,
        "messages",
        format!(
            "{} of {} sent at {}/s, {}-byte data (+{} warm-up not recorded); {} acknowledged, {} refused",
            out.sent, o.messages, o.rate, o.payload, out.warmup_sent, out.acked, out.publish_failures
        ),
    );
    if let Some(f) = &out.first_publish_failure {
        row(&mut s, "first refusal", f.clone());
    }
    row(
        &mut s,
        "copies",
        format!(
            "{} delivered of {} expected: lost {}, duplicates {}, reordered {}",
            out.delivered,
            out.expected,
            out.lost(),
            out.duplicates,
            out.reordered
        ),
    );
    if out.server_dropped > 0 || out.disconnected > 0 {
        row(
            &mut s,
            "server dropped",
            format!(
                "{} events (drop notices); {} subscribers disconnected ({} of them stalled)",
                out.server_dropped, out.disconnected, out.stalled_disconnected
            ),
        );
    }
    row(
        &mut s,
        "throughput",
        format!("{:.0} copies/s over {:.2} s", out.rate(), out.window_secs),
    );
    row(&mut s, "latency", line(&out.latency));
    row(&mut s, "  from send", line(&out.from_send));
    row(&mut s, "publisher slip", line(&out.slip));
    if let Some(r) = out.rss {
        let per = per_connection_bytes(r, out.counted)
            .map(|b| format!(" ({:.2} KiB per connection)", b / 1024.0))
            .unwrap_or_default();
        row(
            &mut s,
            "server RSS",
            format!(
                "{} before, {} connected{per}, {} at the end",
                mib(r.before),
                r.connected.map_or("?".to_string(), mib),
                r.end.map_or("?".to_string(), mib)
            ),
        );
    }
    if let Some(busy) = out.tool_busy_percent {
        row(
            &mut s,
            "tool busy",
            format!("{busy:.0}% of the time from the first message (outside poll)"),
        );
    }
    if let Some(w) = out.saturation_warning() {
        row(&mut s, "warning", w);
    }
    if let Some(why) = &out.stopped_early {
        row(&mut s, "stopped early", why.clone());
    }
    s
}

/// One curve of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Its legend.
    pub label: String,
    /// (quantile, milliseconds), quantiles rising.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// The x position of quantile `q` on the "nines" axis: 0 at 0%, 1 at 90%, 2 at 99%...
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-9).log10()
}

/// A tick step of about a fifth of `max`: 1, 2 or 5 × 10^k.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-6);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The latency axis: linear from 0, or logarithmic over whole decades when the curves span
/// more than two of them (an overloaded server next to a fast one).
enum YAxis {
    Linear { max: f64, step: f64 },
    Log { low: i32, high: i32 },
}

impl YAxis {
    fn fit(min_ms: f64, max_ms: f64) -> YAxis {
        if min_ms > 0.0 && max_ms / min_ms > 100.0 {
            YAxis::Log {
                low: min_ms.log10().floor() as i32,
                high: (max_ms.log10().ceil() as i32).max(min_ms.log10().floor() as i32 + 1),
            }
        } else {
            let step = nice_step(max_ms);
            YAxis::Linear {
                max: (max_ms / step).ceil().max(1.0) * step,
                step,
            }
        }
    }

    /// Where `v` stands, from 0 (bottom) to 1 (top).
    fn frac(&self, v: f64) -> f64 {
        match *self {
            YAxis::Linear { max, .. } => v / max,
            YAxis::Log { low, high } => {
                (v.max(10f64.powi(low)).log10() - f64::from(low)) / f64::from(high - low)
            }
        }
    }

    /// The values with a grid line and a label.
    fn ticks(&self) -> Vec<f64> {
        match *self {
            YAxis::Linear { max, step } => (0..)
                .map(|i| f64::from(i) * step)
                .take_while(|v| *v <= max + step / 2.0)
                .collect(),
            YAxis::Log { low, high } => (low..=high).map(|e| 10f64.powi(e)).collect(),
        }
    }
}

/// An SVG plot of `series`: latency (ms) against percentile on a log "nines" axis.
pub fn svg(title: &str, series: &[Series]) -> String {
    let (w, h) = (760.0, 440.0);
    let (left, right, top, bottom) = (70.0, 190.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all = series.iter().flat_map(|s| s.points.iter());
    let max_x = all
        .clone()
        .map(|(q, _)| nines(*q))
        .fold(2.0f64, f64::max)
        .sub(1e-9)
        .ceil()
        .min(9.0);
    let max_ms = all.clone().map(|(_, v)| *v).fold(0.0f64, f64::max);
    let min_ms = all
        .map(|(_, v)| *v)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let axis = YAxis::fit(min_ms, max_ms);
    let x = |q: f64| left + nines(q).min(max_x) / max_x * pw;
    let y = |v: f64| top + ph - axis.frac(v) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        left + pw / 2.0,
        escape(title)
    );
    // Grid and axes.
    for i in 0..=max_x as usize {
        let gx = left + i as f64 / max_x * pw;
        let label = match i {
            0 => "0%".to_string(),
            i => format!("{}%", 100.0 - 100.0 / 10f64.powi(i as i32)),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            top + ph,
            top + ph + 18.0
        );
    }
    for v in axis.ticks() {
        let gy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + pw,
            left - 6.0,
            gy + 4.0,
            trim_float(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        left + pw / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Curves and legend.
    for (i, series) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if !series.points.is_empty() {
            let mut d = String::new();
            for (j, (q, v)) in series.points.iter().enumerate() {
                let _ = write!(
                    d,
                    "{}{:.1} {:.1}",
                    if j == 0 { "M" } else { " L" },
                    x(*q),
                    y(*v)
                );
            }
            let _ = writeln!(
                s,
                r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 22.0,
            lx + 28.0,
            ly + 4.0,
            escape(&series.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rss_per_connection_needs_the_settled_reading_and_counted_subscribers() {
        let r = |connected| Rss {
            before: 1000,
            connected,
            end: None,
        };
        assert_eq!(per_connection_bytes(r(None), 10), None);
        assert_eq!(per_connection_bytes(r(Some(2000)), 0), None);
        assert_eq!(per_connection_bytes(r(Some(2000)), 8), Some(128_000.0));
    }

    #[test]
    fn the_histogram_holds_the_longest_latency_of_its_run() {
        // A run of two hours (past the fixed hour it once had) and one of a few seconds.
        for run in [Duration::from_secs(7200), Duration::from_secs(8)] {
            let mut h = histogram(run);
            h.record(run.as_nanos() as u64 + 999_000_000).unwrap();
        }
    }

    #[test]
    fn the_curve_rises_to_the_maximum() {
        let mut h = histogram(std::time::Duration::from_secs(60));
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let (q, v) = *c.last().unwrap();
        assert!((q - 0.9999).abs() < 1e-9);
        assert!((v - 10.0).abs() < 0.01, "{v}");
        assert!(curve(&histogram(std::time::Duration::from_secs(60))).is_empty());
    }

    #[test]
    fn the_plot_is_an_svg_with_a_path_per_series() {
        let mut h = histogram(std::time::Duration::from_secs(60));
        for v in [1_000_000, 2_000_000, 3_000_000] {
            h.record(v).unwrap();
        }
        let s = svg(
            "a <title>",
            &[
                Series {
                    label: "one".into(),
                    points: curve(&h),
                },
                Series {
                    label: "two & more".into(),
                    points: vec![(0.0, 0.5), (0.999, 7.0)],
                },
            ],
        );
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<path ").count(), 2);
        assert!(s.contains("a &lt;title&gt;") && s.contains("two &amp; more"));
        assert!(s.contains(">99.9%<"));
        assert!(s.contains(">7<") || s.contains(">8<"), "a linear axis: {s}");

        // Curves three decades apart: a log axis with a line per decade.
        let wide = [Series {
            label: "wide".into(),
            points: vec![(0.0, 0.2), (0.99, 9000.0)],
        }];
        let s = svg("wide", &wide);
        for decade in [">0.1<", ">1<", ">10<", ">100<", ">1000<", ">10000<"] {
            assert!(s.contains(decade), "{decade} in {s}");
        }
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(0.9), 0.2);
        assert_eq!(nice_step(37.0), 10.0);
    }
}
