//! mcp-stream inside a host's own mio loop.
//!
//! The host owns the `Poll`. It serves its own socket (a UDP echo on token 0), publishes a
//! `tick` event from its own code once a second, and lets another thread publish through a
//! `Publisher` (the host chose to give the server a waker, on token 101). It also adds an MCP
//! tool, `wait {ms}`, that answers later: the host keeps the call and finishes it from its own
//! loop when the time has come, reporting progress first. And an MCP resource,
//! `host://ticks`, whose contents are the tick count and whose subscribers hear of each tick.
//! The server gets tokens 100 and up; everything else is the host's.
//!
//! Run it with `cargo run --example embedded`, then
//! `curl -N 'http://127.0.0.1:8080/stream/sse?topic=ticks,jobs'` and `nc -u 127.0.0.1 9000`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mcp_stream::{config::Config, CallId, Resource, Server, TokenRange, Tool, ToolReply};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

/// The host's own socket.
const ECHO: Token = Token(0);
/// Where the server's tokens start.
const SERVER_TOKENS: TokenRange = TokenRange {
    start: 100,
    len: 1 << 24,
};

/// A host program with its own socket and timer, and the server embedded beside them.
pub struct Host {
    poll: Poll,
    events: Events,
    pub server: Server,
    echo: UdpSocket,
    tick_every: Duration,
    next_tick: Instant,
    /// Read by the `host://ticks` resource.
    ticks: Arc<AtomicU64>,
    /// Calls of the `wait` tool, as the handler hands them over.
    waits: mpsc::Receiver<(CallId, Duration)>,
    /// Those calls with the time they finish.
    pending: Vec<(CallId, Instant)>,
}

impl Host {
    /// Binds the server on `http` and the echo socket on `udp`, ticking every `tick_every`.
    pub fn new(config: Config, udp: SocketAddr, tick_every: Duration) -> io::Result<Host> {
        let poll = Poll::new()?;
        let mut server = Server::bind(config)?;
        server.register(poll.registry(), SERVER_TOKENS)?;
        server.enable_waker()?;
        let mut echo = UdpSocket::bind(udp)?;
        poll.registry()
            .register(&mut echo, ECHO, Interest::READABLE)?;
        // The handler runs on this loop's thread: it only records the call and answers later.
        let (sender, waits) = mpsc::channel();
        let wait = Tool {
            name: "wait".into(),
            description: "Answers after ms milliseconds, with one progress report".into(),
            input_schema: serde_json::json!({
                "type": "object",
                "properties": {"ms": {"type": "integer", "minimum": 0}},
                "required": ["ms"],
            }),
            handler: Box::new(move |call, arguments| {
                let Some(ms) = arguments.get("ms").and_then(serde_json::Value::as_u64) else {
                    return ToolReply::Done(Err("wait needs ms, a whole number".into()));
                };
                let _ = sender.send((call, Duration::from_millis(ms)));
                ToolReply::Later
            }),
        };
        server
            .add_tool(wait)
            .map_err(|_| io::Error::other("the tool name is taken"))?;
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let resource = Resource {
            uri: "host://ticks".into(),
            name: "ticks".into(),
            description: "How many ticks the host has published".into(),
            mime_type: "text/plain".into(),
            read: Box::new(move || counter.load(Ordering::Relaxed).to_string()),
        };
        server
            .add_resource(resource)
            .map_err(|_| io::Error::other("the resource uri is taken"))?;
        Ok(Host {
            poll,
            events: Events::with_capacity(256),
            server,
            echo,
            tick_every,
            next_tick: Instant::now() + tick_every,
            ticks,
            waits,
            pending: Vec::new(),
        })
    }

    /// The echo socket's address.
    pub fn echo_addr(&self) -> io::Result<SocketAddr> {
        self.echo.local_addr()
    }

    /// One turn of the host's loop: wait for the earliest of the host's and the server's
    /// deadlines, then hand each event to its owner.
    pub fn turn(&mut self) -> io::Result<()> {
        let now = Instant::now();
        let next_finish = self.pending.iter().map(|(_, at)| *at).min();
        let host_deadline = next_finish.map_or(self.next_tick, |at| at.min(self.next_tick));
        let host_wait = host_deadline.saturating_duration_since(now);
        let timeout = self
            .server
            .poll_timeout(now)
            .map_or(host_wait, |t| t.min(host_wait));
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            other => other?,
        }
        let now = Instant::now();
        for event in &self.events {
            if event.token() == ECHO {
                echo(&self.echo)?;
            } else if self.server.owns(event.token()) {
                self.server.handle_event(event, now);
            }
        }
        if now >= self.next_tick {
            let tick = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
            let data = serde_json::json!({ "tick": tick });
            if let Err(e) = self.server.publish(now, "ticks", Some("tick"), &data) {
                eprintln!("tick not published: {}", e.reason());
            }
            self.server.resource_updated(now, "host://ticks");
            self.next_tick = now + self.tick_every;
        }
        self.server.on_timeout(Instant::now());
        self.finish_waits(Instant::now());
        Ok(())
    }

    /// Takes new `wait` calls and finishes those whose time has come.
    fn finish_waits(&mut self, now: Instant) {
        while let Ok((call, after)) = self.waits.try_recv() {
            self.pending.push((call, now + after));
        }
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(_, at)| *at <= now);
        self.pending = later;
        for (call, _) in due {
            self.server.tool_progress(now, call, 1.0, Some(1.0));
            self.server.tool_finish(now, call, Ok("waited".into()));
        }
    }
}

/// Sends every datagram waiting on `socket` back where it came from.
fn echo(socket: &UdpSocket) -> io::Result<()> {
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                socket.send_to(&buf[..n], from)?;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

#[allow(dead_code)] // The tests include this file for `Host`, not for `main`.
fn main() -> io::Result<()> {
    let mut host = Host::new(
        Config::default(),
        "127.0.0.1:9000".parse().expect("an address"),
        Duration::from_secs(1),
    )?;
    println!(
        "listening on http://{}, echoing on udp://{}",
        host.server.local_addr(),
        host.echo_addr()?
    );
    // Another thread publishes through the waker the host gave the server.
    let publisher = host.server.publisher();
    std::thread::spawn(move || {
        for n in 0.. {
            std::thread::sleep(Duration::from_secs(5));
            if publisher
                .publish("jobs", Some("done"), serde_json::json!({ "job": n }))
                .is_err()
            {
                return;
            }
        }
    });
    loop {
        host.turn()?;
    }
}
