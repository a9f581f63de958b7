//! The options of `mcp-stream bench`, their defaults and checks, and the help text. A mistake is
//! one line (`main` prints it and exits 2, as for every other bad option).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The help text of `mcp-stream bench --help`.
pub const USAGE: &str = "\
mcp-stream bench: end-to-end latency of a pub/sub streaming server, open-loop

USAGE:
    mcp-stream bench [OPTIONS]
    mcp-stream bench --baseline [OPTIONS]
    mcp-stream bench plot OUT.svg [--title TEXT] LABEL=RUN.json...   (curves of --json runs)

N subscribers connect (SSE `GET /stream/sse?topic=T`, or WebSocket `/stream/ws` and
{\"type\":\"join\",\"room\":T}); a publisher sends M messages at R per second, each at its intended
time start + k/R whatever happened before (open loop). Every delivered copy's latency is taken
from that intended time, so a stalled publisher or server cannot hide its stall (coordinated
omission); the latency from the actual send and the publisher's slip are reported too.

OPTIONS:
    --url URL              the server (default http://127.0.0.1:8080)
    -n, --connections N    subscribers (default 100)
    --transport KIND       sse, ws, or mix (every other subscriber on WebSocket) (default sse)
    --publisher KIND       http (POST /stream/publish, pipelined on one keep-alive connection)
                           or ws ({\"type\":\"publish\",...} on one WebSocket) (default http)
    --messages M           messages measured (default 1000)
    --rate R               messages per second (default 100)
    --payload BYTES        size of each message's `data` JSON (default 200, at least 64)
    --topic NAME           the topic or room (default bench)
    --ramp N[/s]           subscribers connected per second (default 2000/s)
    --warmup SECS          publish at the same rate for SECS first, not recorded (default 1)
    --drain SECS           after the last message, wait at most SECS for late copies (default 2)
    --duration SECS        hard stop of the whole run, connecting included (default 120)
    --stalled K            the first K subscribers stop reading while messages are sent (their
                           receive buffers are 4 KiB) and read what is left afterwards: slow
                           consumers, to see the server's slow-consumer policy and whether the
                           others are spared; their copies count for loss, not latency
                           (default 0)
    --pid PID              the server's process: its RSS before connecting, with every
                           subscriber connected and idle, and at the end; RSS per connection
    --json                 print one JSON object instead of the table
    --plot FILE.svg        write the latency percentile plot (log \"nines\" axis) as SVG
    --baseline             no server: the tool listens itself and writes the same framed bytes
                           to the same N sockets, the floor of what the kernel allows
    -h, --help             print this help

Every option takes its value as `--option VALUE` or `--option=VALUE`. Raise `ulimit -n` above
N + 16 yourself (with --baseline too: its writer is a child process holding the other N ends);
running out of descriptors stops the run and says so.
The report gives the tool's own load (`tool busy`: the share of time its loop spent outside
poll from the first message on) and warns when it passes 80% or the publisher slipped over 1 ms
at p99: the figures are then the tool's limit, not the server's.
Exit status: 0 after a run (loss is reported, not an error), 1 when the run could not be made
or stopped before its first message (--duration while connecting, say), 2 for a bad option.
";

/// Which protocol the subscribers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Server-Sent Events.
    Sse,
    /// WebSocket with a `join`.
    Ws,
    /// Even subscribers on SSE, odd ones on WebSocket.
    Mix,
}

impl Transport {
    /// Whether subscriber `i` speaks WebSocket.
    pub fn is_ws(self, i: usize) -> bool {
        match self {
            Transport::Sse => false,
            Transport::Ws => true,
            Transport::Mix => i % 2 == 1,
        }
    }

    /// The option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Mix => "mix",
        }
    }
}

/// How the publisher sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublisherKind {
    /// `POST /stream/publish`, pipelined on one keep-alive connection.
    Http,
    /// `{"type":"publish",...}` text frames on one WebSocket.
    Ws,
}

impl PublisherKind {
    /// The option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            PublisherKind::Http => "http",
            PublisherKind::Ws => "ws",
        }
    }
}

/// One run's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The server's base URL as given.
    pub url: String,
    /// Where it resolved to.
    pub addr: SocketAddr,
    /// The `Host` header to send.
    pub host: String,
    /// Subscribers.
    pub connections: usize,
    /// Their protocol.
    pub transport: Transport,
    /// The publisher's protocol.
    pub publisher: PublisherKind,
    /// Messages measured (the warm-up comes on top).
    pub messages: u64,
    /// Messages per second.
    pub rate: f64,
    /// Bytes of each message's `data` JSON.
    pub payload: usize,
    /// The topic or room.
    pub topic: String,
    /// Connections started per second.
    pub ramp: f64,
    /// Subscribers that do not read while messages are sent.
    pub stalled: usize,
    /// Warm-up time before the measured messages.
    pub warmup: Duration,
    /// How long to wait for late copies after the last message.
    pub drain: Duration,
    /// Hard stop of the whole run.
    pub duration: Duration,
    /// The server's pid, for its RSS.
    pub pid: Option<u32>,
    /// JSON on stdout instead of the table.
    pub json: bool,
    /// Where to write the SVG plot.
    pub plot: Option<PathBuf>,
    /// Measure the raw floor instead of a server.
    pub baseline: bool,
}

impl Options {
    /// Warm-up messages, sent before the measured ones.
    pub fn warmup_messages(&self) -> u64 {
        (self.warmup.as_secs_f64() * self.rate).ceil() as u64
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Run with these options.
    Run(Box<Options>),
    /// Print [`USAGE`].
    Help,
}

/// The smallest `--payload`: room for the sequence number, the timestamp and the padding key.
pub const MIN_PAYLOAD: usize = 64;
/// The largest `--payload`.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The most (subscribers × messages) whose copies are tracked one bit each (1 GiB of bits).
const MAX_TRACKED_BITS: u128 = 8 << 30;

/// Parses everything after `bench`.
pub fn parse(args: &[String]) -> Result<Parsed, String> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Parsed::Help);
    }
    let mut url = None;
    let mut connections = None;
    let mut transport = None;
    let mut publisher = None;
    let mut messages = None;
    let mut rate = None;
    let mut payload = None;
    let mut topic = None;
    let mut ramp = None;
    let mut stalled = None;
    let mut warmup = None;
    let mut drain = None;
    let mut duration = None;
    let mut pid = None;
    let mut json = false;
    let mut plot = None;
    let mut baseline = false;

    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        // Flags without a value.
        match name {
            "--json" | "--baseline" => {
                if inline.is_some() {
                    return Err(format!("option {name} takes no value"));
                }
                if name == "--json" {
                    json = true;
                } else {
                    baseline = true;
                }
                continue;
            }
            _ if !name.starts_with('-') => return Err(format!("unexpected argument \"{arg}\"")),
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => match args.get(i) {
                Some(v) if !v.starts_with("--") => {
                    i += 1;
                    v.as_str()
                }
                _ => return Err(format!("option {name} needs a value")),
            },
        };
        if value.trim().is_empty() {
            return Err(format!("option {name} needs a value"));
        }
        match name {
            "--url" => once(&mut url, value.to_string(), name)?,
            "-n" | "--connections" => {
                once(&mut connections, count(name, value, 1, 1_000_000)?, name)?;
            }
            "--transport" => {
                let t = match value {
                    "sse" => Transport::Sse,
                    "ws" => Transport::Ws,
                    "mix" => Transport::Mix,
                    _ => return Err(format!("invalid --transport \"{value}\" (sse, ws or mix)")),
                };
                once(&mut transport, t, name)?;
            }
            "--publisher" => {
                let p = match value {
                    "http" => PublisherKind::Http,
                    "ws" => PublisherKind::Ws,
                    _ => return Err(format!("invalid --publisher \"{value}\" (http or ws)")),
                };
                once(&mut publisher, p, name)?;
            }
            "--messages" => once(
                &mut messages,
                count(name, value, 1, 100_000_000)? as u64,
                name,
            )?,
            "--rate" => once(&mut rate, number(name, value, 0.001, 1_000_000.0)?, name)?,
            "--payload" => once(
                &mut payload,
                count(name, value, MIN_PAYLOAD, MAX_PAYLOAD)?,
                name,
            )?,
            "--topic" => {
                if !mcp_stream::proto::hub::valid_topic(value) {
                    return Err(format!(
                        "invalid --topic \"{value}\" (1-{} bytes of A-Z a-z 0-9 _ . : / -)",
                        mcp_stream::proto::hub::MAX_TOPIC_BYTES
                    ));
                }
                once(&mut topic, value.to_string(), name)?;
            }
            "--ramp" => {
                let v = value.strip_suffix("/s").unwrap_or(value);
                once(&mut ramp, number(name, v, 1.0, 10_000_000.0)?, name)?;
            }
            "--stalled" => once(&mut stalled, count(name, value, 0, 1_000_000)?, name)?,
            "--warmup" => once(&mut warmup, seconds(name, value, 0.0)?, name)?,
            "--drain" => once(&mut drain, seconds(name, value, 0.0)?, name)?,
            "--duration" => once(&mut duration, seconds(name, value, 0.001)?, name)?,
            "--pid" => {
                let p = value
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("invalid --pid \"{value}\""))?;
                once(&mut pid, p, name)?;
            }
            "--plot" => once(&mut plot, PathBuf::from(value), name)?,
            _ => {
                return Err(format!(
                    "unknown option {name} (see mcp-stream bench --help)"
                ))
            }
        }
    }

    let url = url.unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let (addr, host) = if baseline {
        (
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "baseline".to_string(),
        )
    } else {
        resolve(&url)?
    };
    let options = Options {
        url,
        addr,
        host,
        connections: connections.unwrap_or(100),
        transport: transport.unwrap_or(Transport::Sse),
        publisher: publisher.unwrap_or(PublisherKind::Http),
        messages: messages.unwrap_or(1000),
        rate: rate.unwrap_or(100.0),
        payload: payload.unwrap_or(200),
        topic: topic.unwrap_or_else(|| "bench".to_string()),
        ramp: ramp.unwrap_or(2000.0),
        stalled: stalled.unwrap_or(0),
        warmup: warmup.unwrap_or(Duration::from_secs(1)),
        drain: drain.unwrap_or(Duration::from_secs(2)),
        duration: duration.unwrap_or(Duration::from_secs(120)),
        pid,
        json,
        plot,
        baseline,
    };
    if options.stalled > options.connections {
        return Err(format!(
            "--stalled {} is more than the {} subscribers",
            options.stalled, options.connections
        ));
    }
    let bits =
        options.connections as u128 * u128::from(options.messages + options.warmup_messages());
    if bits > MAX_TRACKED_BITS {
        return Err(format!(
            "--connections × (--messages + warm-up messages) is {bits}: at most {MAX_TRACKED_BITS} copies can be tracked"
        ));
    }
    Ok(Parsed::Run(Box::new(options)))
}

fn once<T>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), String> {
    if slot.replace(v).is_some() {
        return Err(format!("option {name} given more than once"));
    }
    Ok(())
}

fn count(name: &str, v: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = v
        .replace([',', '_'], "")
        .parse()
        .map_err(|_| format!("invalid {name} \"{v}\" (a whole number)"))?;
    if !(min..=max).contains(&n) {
        return Err(format!("{name} must be from {min} to {max}, not {n}"));
    }
    Ok(n)
}

fn number(name: &str, v: &str, min: f64, max: f64) -> Result<f64, String> {
    let n: f64 = v
        .replace([',', '_'], "")
        .parse()
        .map_err(|_| format!("invalid {name} \"{v}\" (a number)"))?;
    if !n.is_finite() || n < min || n > max {
        return Err(format!("{name} must be from {min} to {max}, not {v}"));
    }
    Ok(n)
}

fn seconds(name: &str, v: &str, min: f64) -> Result<Duration, String> {
    let s = number(name, v.strip_suffix('s').unwrap_or(v), min, 86_400.0)?;
    Ok(Duration::from_secs_f64(s))
}

/// `http://HOST:PORT[/]` → the address and the `Host` header.
fn resolve(url: &str) -> Result<(SocketAddr, String), String> {
    if url.starts_with("https://") {
        return Err(format!(
            "--url {url}: bench speaks plain http:// only (measure TLS servers without TLS)"
        ));
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("invalid --url \"{url}\" (expected http://HOST:PORT)"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "invalid --url \"{url}\" (expected http://HOST:PORT, with no path)"
        ));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("--url {url}: cannot resolve {authority}"))?;
    Ok((addr, authority.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> Options {
        match p(args) {
            Ok(Parsed::Run(o)) => *o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(o.host, "127.0.0.1:8080");
        assert_eq!((o.connections, o.messages, o.payload), (100, 1000, 200));
        assert_eq!(
            (o.transport, o.publisher),
            (Transport::Sse, PublisherKind::Http)
        );
        assert_eq!(o.warmup_messages(), 100);
    }

    #[test]
    fn values_inline_or_separate() {
        let o = run(&[
            "--url=http://localhost:9000/",
            "-n",
            "10,000",
            "--transport",
            "mix",
            "--publisher=ws",
            "--rate",
            "1000",
            "--ramp",
            "500/s",
            "--warmup",
            "0",
            "--duration",
            "5s",
            "--json",
            "--plot",
            "x.svg",
        ]);
        assert_eq!(o.addr.port(), 9000);
        assert_eq!(o.host, "localhost:9000");
        assert_eq!(o.connections, 10_000);
        assert!(o.transport.is_ws(1) && !o.transport.is_ws(2));
        assert_eq!(o.publisher, PublisherKind::Ws);
        assert_eq!((o.rate, o.ramp), (1000.0, 500.0));
        assert_eq!(o.warmup_messages(), 0);
        assert_eq!(o.duration, Duration::from_secs(5));
        assert!(o.json);
        assert_eq!(o.plot, Some(PathBuf::from("x.svg")));
    }

    #[test]
    fn mistakes_are_one_line() {
        for (args, needle) in [
            (&["--rate"][..], "needs a value"),
            (&["--rate", "0"], "--rate must be"),
            (&["--payload", "10"], "--payload must be from 64"),
            (&["--transport", "tcp"], "sse, ws or mix"),
            (&["--url", "https://x:1"], "plain http"),
            (&["--url", "http://x:1/stream"], "no path"),
            (&["--bogus", "1"], "unknown option --bogus"),
            (&["extra"], "unexpected argument"),
            (&["--json=1"], "takes no value"),
            (&["-n", "1", "-n", "2"], "more than once"),
            (&["--topic", "a b"], "invalid --topic"),
            (&["-n", "2", "--stalled", "3"], "more than the 2"),
            (
                &["-n", "1000000", "--messages", "100000000"],
                "can be tracked",
            ),
        ] {
            let e = p(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn help_wins() {
        assert_eq!(p(&["--rate", "x", "--help"]), Ok(Parsed::Help));
    }
}
