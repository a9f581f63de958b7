//! The building blocks of the operational figures: the kinds of error the engine counts, the
//! delivery-latency histogram, the performance monitor's judgement, and the Prometheus text
//! format they are written in. The engine does the counting and gathers the figures into
//! `GET /metrics`, `GET /stats` and `/health`.
//!
//! Counting costs no allocation: counters are integers, and the histogram is two arrays of
//! fixed size that an observation increments.

use std::fmt::Write;
use std::time::Duration;

/// What went wrong, as `mcp_stream_errors_total{kind}` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// `400`: a malformed request, body or JSON.
    BadRequest,
    /// `401`: a missing or bad credential.
    Unauthorized,
    /// `403`: an origin, peer or topic that is not allowed.
    Forbidden,
    /// `404`: an unknown path, session or feature.
    NotFound,
    /// `405`: a method the path does not take.
    MethodNotAllowed,
    /// `406`: an `Accept` the MCP endpoint cannot answer.
    NotAcceptable,
    /// `408`: a request head or body too slow.
    Timeout,
    /// `409`: a second GET stream in one MCP session.
    Conflict,
    /// `413` or `431`: a body or head too large.
    TooLarge,
    /// `429`: refused by a rate limit or the per-address connection limit.
    RateLimited,
    /// `501`: a feature that is off.
    NotEnabled,
    /// `503`: at capacity.
    Unavailable,
    /// `500`, or a JSON-RPC internal error or timeout (`-32603`, `-32001`): the server failed.
    Internal,
    /// Any other HTTP status of 400 and above.
    OtherHttp,
    /// A WebSocket error message, or a session closed for breaking the protocol.
    WebSocket,
    /// A JSON-RPC error answer to an MCP client for what it asked (a parse error, an unknown
    /// method or tool, bad params, a tool's own error).
    JsonRpc,
    /// A gateway child that exited while its session was open.
    Gateway,
    /// A socket the driver dropped on an I/O error.
    Io,
}

impl ErrorKind {
    /// Every kind, in the order they are listed.
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::NotAcceptable,
        ErrorKind::Timeout,
        ErrorKind::Conflict,
        ErrorKind::TooLarge,
        ErrorKind::RateLimited,
        ErrorKind::NotEnabled,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
        ErrorKind::OtherHttp,
        ErrorKind::WebSocket,
        ErrorKind::JsonRpc,
        ErrorKind::Gateway,
        ErrorKind::Io,
    ];

    /// The label value, e.g. `"not_found"`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::NotAcceptable => "not_acceptable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::NotEnabled => "not_enabled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::OtherHttp => "other_http",
            ErrorKind::WebSocket => "websocket",
            ErrorKind::JsonRpc => "jsonrpc",
            ErrorKind::Gateway => "gateway",
            ErrorKind::Io => "io",
        }
    }

    /// The kind of an HTTP response status; `None` below 400.
    pub fn of_status(status: u16) -> Option<ErrorKind> {
        Some(match status {
            ..=399 => return None,
            400 => ErrorKind::BadRequest,
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            405 => ErrorKind::MethodNotAllowed,
            406 => ErrorKind::NotAcceptable,
            408 => ErrorKind::Timeout,
            409 => ErrorKind::Conflict,
            413 | 431 => ErrorKind::TooLarge,
            429 => ErrorKind::RateLimited,
            500 => ErrorKind::Internal,
            501 => ErrorKind::NotEnabled,
            503 => ErrorKind::Unavailable,
            _ => ErrorKind::OtherHttp,
        })
    }

    /// Whether the server, not the client, is at fault: at capacity, an internal failure or
    /// timeout, a gateway child lost. The monitor's error rate counts only these, so that no
    /// client can make the server look degraded by sending bad requests.
    pub fn is_server_side(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Internal | ErrorKind::Gateway
        )
    }
}

/// Errors counted by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    /// Counts one error of `kind`.
    pub fn add(&mut self, kind: ErrorKind) {
        self.0[kind as usize] += 1;
    }

    /// How many errors of `kind` were counted.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind as usize]
    }

    /// How many errors were counted, of every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// How many errors were the server's fault ([`ErrorKind::is_server_side`]).
    pub fn server_side(&self) -> u64 {
        ErrorKind::ALL
            .iter()
            .filter(|k| k.is_server_side())
            .map(|&k| self.get(k))
            .sum()
    }
}

/// The bucket bounds of `mcp_stream_delivery_latency_seconds`: in microseconds, and as the
/// exposition writes them. The last bucket, `+Inf`, is implied.
const EXPOSED_BOUNDS: [(u64, &str); 16] = [
    (100, "0.0001"),
    (250, "0.00025"),
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];
/// Values below this many microseconds have a fine bucket each.
const EXACT_BELOW: u64 = 16;
/// Fine buckets per power of two beyond that: 8, so a quantile is within 12.5%.
const SUB_BITS: u32 = 3;
/// The largest power of two of microseconds with fine buckets (2^40 µs is about 12 days);
/// anything longer counts in the last one.
const TOP_EXPONENT: u32 = 40;
const FINE_BUCKETS: usize =
    EXACT_BELOW as usize + ((TOP_EXPONENT - EXACT_BELOW.trailing_zeros() + 1) << SUB_BITS) as usize;

/// How long the copies of published events took from publish to their socket write: the
/// Prometheus buckets of the exposition, and log-linear buckets (exact below 16 µs, then 8 per
/// power of two) for quantiles within 12.5%.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    exposed: [u64; EXPOSED_BOUNDS.len() + 1],
    fine: Box<[u64; FINE_BUCKETS]>,
    count: u64,
    sum_micros: u64,
    max_micros: u64,
}

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram {
            exposed: [0; EXPOSED_BOUNDS.len() + 1],
            fine: Box::new([0; FINE_BUCKETS]),
            count: 0,
            sum_micros: 0,
            max_micros: 0,
        }
    }
}

impl LatencyHistogram {
    /// Counts one delivery that took `latency`.
    pub fn observe(&mut self, latency: Duration) {
        // Whole microseconds without 128-bit arithmetic: this runs for every event copy.
        let micros = latency
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(latency.subsec_micros()));
        // Most deliveries fall in the first buckets: a scan from the start beats a search.
        let exposed = EXPOSED_BOUNDS
            .iter()
            .position(|&(bound, _)| micros <= bound)
            .unwrap_or(EXPOSED_BOUNDS.len());
        self.exposed[exposed] += 1;
        self.fine[fine_index(micros)] += 1;
        self.count += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
        self.max_micros = self.max_micros.max(micros);
    }

    /// How many deliveries were counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their total time.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros)
    }

    /// The longest.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_micros)
    }

    /// The `q` quantile (0 to 1): the highest value of the bucket that holds it, so never
    /// below the true value and at most 12.5% above it. `None` when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let (_, high) = self.quantile_since(&LatencyHistogram::default(), q)?;
        Some(high.min(self.max()))
    }

    /// The `q` quantile of what was counted after `earlier`, a copy of this histogram taken
    /// before: the range of the fine bucket that holds it, lowest and highest value. `None`
    /// when nothing was counted since.
    pub fn quantile_since(
        &self,
        earlier: &LatencyHistogram,
        q: f64,
    ) -> Option<(Duration, Duration)> {
        let count = self.count.saturating_sub(earlier.count);
        if count == 0 {
            return None;
        }
        // The rank of the quantile, from 1 to `count`.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        let mut last = FINE_BUCKETS - 1;
        for (index, (now, then)) in self.fine.iter().zip(earlier.fine.iter()).enumerate() {
            seen += now.saturating_sub(*then);
            if seen >= rank {
                last = index;
                break;
            }
        }
        let low = if last == 0 {
            0
        } else {
            fine_upper_bound(last - 1) + 1
        };
        let range = (low, fine_upper_bound(last));
        Some((
            Duration::from_micros(range.0),
            Duration::from_micros(range.1),
        ))
    }

    /// The exposition's buckets: each upper bound as written (the last is `+Inf`) with the
    /// count of deliveries at or below it.
    pub fn cumulative_buckets(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let bounds = EXPOSED_BOUNDS.iter().map(|&(_, text)| text).chain(["+Inf"]);
        bounds
            .zip(self.exposed.iter())
            .scan(0, |total, (bound, n)| {
                *total += n;
                Some((bound, *total))
            })
    }
}

/// The fine bucket of a value in microseconds.
fn fine_index(micros: u64) -> usize {
    if micros < EXACT_BELOW {
        return micros as usize;
    }
    let exponent = (63 - micros.leading_zeros()).min(TOP_EXPONENT);
    let micros = micros.min((2 << TOP_EXPONENT) - 1);
    let sub = (micros >> (exponent - SUB_BITS)) as usize & ((1 << SUB_BITS) - 1);
    let first_exponent = EXACT_BELOW.trailing_zeros();
    EXACT_BELOW as usize + (((exponent - first_exponent) as usize) << SUB_BITS) + sub
}

/// The highest value, in microseconds, that falls in fine bucket `index`.
fn fine_upper_bound(index: usize) -> u64 {
    if index < EXACT_BELOW as usize {
        return index as u64;
    }
    let past = index - EXACT_BELOW as usize;
    let exponent = EXACT_BELOW.trailing_zeros() + (past >> SUB_BITS) as u32;
    let sub = (past & ((1 << SUB_BITS) - 1)) as u64;
    (((1 << SUB_BITS) + sub + 1) << (exponent - SUB_BITS)) - 1
}

/// The thresholds of the performance monitor (`streaming.monitoring`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// The p99 delivery latency above which the server is degraded.
    pub p99_latency: Duration,
    /// The share of operations that failed above which the server is degraded, in percent.
    pub error_rate_percent: u64,
}

/// Fewer operations than this in one period are too few to judge an error rate by: one failed
/// request out of two is not a degraded server.
pub const MIN_OPERATIONS_FOR_ERROR_RATE: u64 = 20;
/// Fewer deliveries than this in one period are too few to judge a p99 by: below 100, the p99
/// is the slowest one.
pub const MIN_DELIVERIES_FOR_LATENCY: u64 = 100;

/// The performance monitor (`stream-monitoring`): every period it compares what happened since
/// the last check with its thresholds, logs a warning for each one passed, and keeps the reasons
/// for `/health` until a check finds them gone.
#[derive(Debug, Default)]
pub struct Monitor {
    latency: LatencyHistogram,
    errors: u64,
    operations: u64,
    reasons: Vec<String>,
}

impl Monitor {
    /// Why the server is degraded, as of the last check; empty when it is not.
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }

    /// Judges the period since the last check, given the totals now: the latency histogram,
    /// server-side errors, and operations (requests and WebSocket messages).
    pub fn check(
        &mut self,
        latency: &LatencyHistogram,
        errors: u64,
        operations: u64,
        thresholds: Thresholds,
    ) {
        self.reasons.clear();
        let deliveries = latency.count().saturating_sub(self.latency.count());
        if deliveries >= MIN_DELIVERIES_FOR_LATENCY {
            // Over the threshold only when the whole bucket of the p99 is: never on the
            // strength of the bucket's width.
            if let Some((low, _)) = latency.quantile_since(&self.latency, 0.99) {
                if low > thresholds.p99_latency {
                    self.reasons.push(format!(
                        "p99 delivery latency of at least {:.1} ms is over {:.1} ms",
                        low.as_secs_f64() * 1000.0,
                        thresholds.p99_latency.as_secs_f64() * 1000.0
                    ));
                }
            }
        }
        let (errors_now, operations_now) = (
            errors.saturating_sub(self.errors),
            operations.saturating_sub(self.operations),
        );
        if operations_now >= MIN_OPERATIONS_FOR_ERROR_RATE
            && errors_now * 100 > thresholds.error_rate_percent * operations_now
        {
            self.reasons.push(format!(
                "error rate {}% ({errors_now} errors in {operations_now} operations) is over {}%",
                errors_now * 100 / operations_now,
                thresholds.error_rate_percent
            ));
        }
        for reason in &self.reasons {
            log::warn!("performance monitor: {reason}");
        }
        self.restart(latency, errors, operations);
    }

    /// Starts a period at the totals given, without judging the last one (the monitor was off
    /// until now, or has just judged it).
    pub fn restart(&mut self, latency: &LatencyHistogram, errors: u64, operations: u64) {
        self.latency.clone_from(latency);
        self.errors = errors;
        self.operations = operations;
    }

    /// Forgets the reasons (the monitor was turned off).
    pub fn reset(&mut self) {
        self.reasons.clear();
    }
}

/// Writes Prometheus text exposition format (version 0.0.4): each family once, with its
/// `# HELP` and `# TYPE` lines first.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// A family with one sample and no labels.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        let _ = writeln!(self.text, "{name} {value}");
    }

    /// A family with one sample per value of the label `label`.
    pub fn labelled<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (&'static str, V)>,
    ) {
        self.family(name, kind, help);
        for (value, sample) in samples {
            let _ = writeln!(self.text, "{name}{{{label}=\"{value}\"}} {sample}");
        }
    }

    /// A histogram family from `histogram`, in seconds.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &LatencyHistogram) {
        self.family(name, "histogram", help);
        for (bound, count) in histogram.cumulative_buckets() {
            let _ = writeln!(self.text, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let sum = histogram.sum().as_secs_f64();
        let _ = writeln!(self.text, "{name}_sum {sum}");
        let _ = writeln!(self.text, "{name}_count {}", histogram.count());
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// The text written.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fine_buckets_hold_their_values_and_stay_in_bounds() {
        for micros in (0..5000).chain([u64::MAX / 2, u64::MAX, 1 << 40, (1 << 41) - 1]) {
            let index = fine_index(micros);
            assert!(index < FINE_BUCKETS, "{micros} -> {index}");
            if micros < 1 << 41 {
                assert!(fine_upper_bound(index) >= micros, "{micros}");
                if index > 0 {
                    assert!(fine_upper_bound(index - 1) < micros, "{micros}");
                }
            }
        }
        assert_eq!(fine_upper_bound(FINE_BUCKETS - 1), (1 << 41) - 1);
    }

    #[test]
    fn server_side_errors_are_the_servers_fault_only() {
        let mut errors = ErrorCounts::default();
        for kind in ErrorKind::ALL {
            errors.add(kind);
        }
        assert_eq!(errors.total(), 18);
        assert_eq!(errors.server_side(), 3);
        assert_eq!(ErrorKind::of_status(500), Some(ErrorKind::Internal));
        assert_eq!(ErrorKind::of_status(505), Some(ErrorKind::OtherHttp));
        assert_eq!(ErrorKind::of_status(302), None);
    }

    #[test]
    fn quantiles_are_within_an_eighth_above_the_truth() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for n in 1..=1000 {
            h.observe(Duration::from_micros(n * 10));
        }
        for (q, truth) in [(0.5, 5000), (0.9, 9000), (0.99, 9900), (1.0, 10_000)] {
            let got = h.quantile(q).unwrap().as_micros() as u64;
            assert!(
                got >= truth && got <= truth + truth / 8,
                "q {q}: {got} vs {truth}"
            );
        }
        assert_eq!(h.max(), Duration::from_micros(10_000));
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum(), Duration::from_micros(10 * 500_500));
    }

    #[test]
    fn exposed_buckets_are_cumulative_with_inclusive_bounds() {
        let mut h = LatencyHistogram::default();
        for micros in [50, 100, 101, 20_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        let buckets: Vec<_> = h.cumulative_buckets().collect();
        assert_eq!(buckets.len(), 17);
        assert_eq!(buckets[0], ("0.0001", 2));
        assert_eq!(buckets[1], ("0.00025", 3));
        assert_eq!(buckets[15], ("10", 3));
        assert_eq!(buckets[16], ("+Inf", 4));
    }

    #[test]
    fn the_monitor_judges_each_period_alone() {
        let thresholds = Thresholds {
            p99_latency: ms(1000),
            error_rate_percent: 5,
        };
        let mut monitor = Monitor::default();
        let mut latency = LatencyHistogram::default();
        // 99 deliveries are too few to judge, however slow.
        for _ in 0..99 {
            latency.observe(ms(2000));
        }
        monitor.check(&latency, 0, 100, thresholds);
        assert!(monitor.reasons().is_empty(), "{:?}", monitor.reasons());
        for _ in 0..100 {
            latency.observe(ms(2000));
        }
        monitor.check(&latency, 0, 100, thresholds);
        assert_eq!(monitor.reasons().len(), 1, "{:?}", monitor.reasons());
        assert!(
            monitor.reasons()[0].starts_with("p99 delivery latency of at least 19"),
            "{:?}",
            monitor.reasons()
        );
        // A p99 just under the threshold, in a bucket that reaches past it, is not over it.
        for _ in 0..100 {
            latency.observe(ms(995));
        }
        monitor.check(&latency, 0, 100, thresholds);
        assert!(monitor.reasons().is_empty(), "{:?}", monitor.reasons());
        // A fast period after a slow one is healthy: only what happened since counts.
        for _ in 0..100 {
            latency.observe(ms(1));
        }
        monitor.check(&latency, 0, 200, thresholds);
        assert!(monitor.reasons().is_empty(), "{:?}", monitor.reasons());
        // 6 errors in 100 operations pass 5%; 5 do not; 2 in 3 are too few to judge.
        monitor.check(&latency, 6, 300, thresholds);
        assert_eq!(monitor.reasons().len(), 1);
        assert!(monitor.reasons()[0].starts_with("error rate 6%"));
        monitor.check(&latency, 11, 400, thresholds);
        assert!(monitor.reasons().is_empty());
        monitor.check(&latency, 13, 403, thresholds);
        assert!(monitor.reasons().is_empty());
        // After a restart, what happened before it is not judged.
        monitor.restart(&latency, 100, 500);
        monitor.check(&latency, 100, 600, thresholds);
        assert!(monitor.reasons().is_empty());
    }

    #[test]
    fn the_exposition_writes_help_and_type_once_per_family() {
        let mut e = Exposition::default();
        e.single("a_total", "counter", "As.", 3);
        e.labelled("b", "gauge", "Bs.", "kind", [("x", 1), ("y", 2)]);
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(1500));
        e.histogram("c_seconds", "Cs.", &h);
        let text = e.finish();
        assert!(text.starts_with("# HELP a_total As.\n# TYPE a_total counter\na_total 3\n"));
        assert!(text.contains("b{kind=\"x\"} 1\nb{kind=\"y\"} 2\n"));
        assert!(text.contains("c_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("c_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("c_seconds_sum 0.0015\nc_seconds_count 1\n"));
    }
}
