//! The driver of one run: a mio loop on this thread holds every subscriber and the publisher.
//!
//! The run goes through four stages: *connecting* (subscribers started at the ramp rate, at
//! most [`MAX_IN_FLIGHT`] handshakes at once, each bounded by [`CONNECT_TIMEOUT`]), *settling*
//! (everyone connected and idle for [`SETTLE`], then the server's RSS), *publishing* (message
//! `k` is sent at its intended time `start + k/R`; a timerfd wakes the loop at that time, since
//! `epoll_wait` only sleeps whole milliseconds) and *draining* (until every subscriber has every
//! copy, or `--drain` passes). `--duration` stops any stage.
//!
//! Each copy is timed when the read that brought it returns: latency from the intended send
//! time goes into one histogram, latency from the send time stamped in the message into
//! another, and the publisher's lateness into a third.
//!
//! Work per wake-up is bounded: each connection reads at most [`READ_BUDGET`] bytes, and one
//! with more to read waits on a ready list for the next turn of the loop (whose poll then does
//! not sleep), so a peer flooding bytes cannot starve the others or hold the run past
//! `--duration`. The time the loop spends outside `poll` from the first message on is the
//! tool's own load, reported as `tool_busy_percent`.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustix::io::Errno;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

use mcp_stream::proto::hub::{Event, EventId};
use mcp_stream::proto::ws::Memory;

use super::baseline::Baseline;
use super::options::{Options, PublisherKind, MAX_PAYLOAD};
use super::report::{histogram, Outcome, Rss};
use super::wire::{self, Answers, Item, SseBody};

const PUBLISHER: Token = Token(usize::MAX - 1);
const TIMER: Token = Token(usize::MAX - 2);
/// Handshakes under way at once, so that a burst does not overflow the server's backlog.
pub const MAX_IN_FLIGHT: usize = 512;
/// How long one subscriber may take to connect (and join).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long everyone stays connected and idle before the RSS is read and publishing starts.
pub const SETTLE: Duration = Duration::from_millis(300);
/// The largest SSE block accepted.
const MAX_BLOCK: usize = 2 * MAX_PAYLOAD + 64 * 1024;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Writes as much of `bytes` as the socket takes now; returns how much that was.
pub fn write_some<W: Write>(stream: &mut W, bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < bytes.len() {
        match stream.write(&bytes[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

/// Whether `e` means this process (or the system) ran out of file descriptors.
fn out_of_fds(e: &io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

/// The soft open-file limit.
fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// A socket error as one line; running out of descriptors says what to do about it.
pub fn fd_error(e: &io::Error, what: &str) -> String {
    if out_of_fds(e) {
        let limit = fd_limit().map_or("unlimited".to_string(), |l| l.to_string());
        format!("{what}: out of file descriptors ({e}); the open-file limit is {limit}: raise it with `ulimit -n`")
    } else {
        format!("{what}: {e}")
    }
}

/// The resident memory of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A timerfd: wake-ups to the nanosecond (timer slack aside) instead of epoll's milliseconds.
struct Timer {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl Timer {
    fn new(poll: &Poll) -> io::Result<Timer> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), TIMER, Interest::READABLE)?;
        Ok(Timer { fd, armed: None })
    }

    /// Fires at `at` (at once if that has passed).
    fn arm(&mut self, at: Instant, now: Instant) {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
        if self.armed == Some(at) {
            return;
        }
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            },
        };
        if timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &spec).is_ok() {
            self.armed = Some(at);
        }
    }

    fn fired(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
        self.armed = None;
    }
}

/// Times of the run, all relative to `epoch`.
struct Clock {
    epoch: Instant,
    /// The intended send time of message 0, once publishing starts.
    start: Option<Instant>,
    period_ns: f64,
    warmup: u64,
    /// Warm-up plus measured messages.
    total: u64,
}

impl Clock {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn intended_ns(&self, seq: u64) -> Option<u64> {
        let start = self.ns(self.start?);
        Some(start + (seq as f64 * self.period_ns) as u64)
    }

    fn intended(&self, seq: u64) -> Option<Instant> {
        self.intended_ns(seq)
            .map(|ns| self.epoch + Duration::from_nanos(ns))
    }
}

/// What one subscriber has had.
#[derive(Default)]
struct Track {
    /// One bit per message (warm-up included).
    seen: Vec<u64>,
    /// The highest sequence number seen.
    top: Option<u64>,
    /// Distinct measured copies.
    got: u64,
    /// Was connected when publishing started (its copies are expected).
    counted: bool,
    /// Has every measured copy, or the last message (what it lacks then is lost), or has
    /// closed: nothing more to wait for.
    finished: bool,
    /// Its copies stay out of the latency figures (`--stalled`: it chose to be late).
    stalled: bool,
}

/// The tallies every copy updates.
struct Tally {
    clock: Clock,
    measured: u64,
    delivered: u64,
    duplicates: u64,
    reordered: u64,
    server_dropped: u64,
    /// Counted subscribers that are finished.
    finished: usize,
    latency: Histogram<u64>,
    from_send: Histogram<u64>,
    last: Option<Instant>,
}

impl Tally {
    fn on_stamp(&mut self, track: &mut Track, seq: u64, sent_ns: u64, now: Instant) {
        let Some(intended) = self.clock.intended_ns(seq) else {
            return; // someone else's message, before we publish
        };
        if seq >= self.clock.total || track.seen.is_empty() {
            return;
        }
        let measured = seq >= self.clock.warmup;
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if track.seen[word] & bit != 0 {
            self.duplicates += u64::from(measured);
            return;
        }
        track.seen[word] |= bit;
        if track.top.is_some_and(|top| seq < top) {
            self.reordered += u64::from(measured);
        }
        track.top = track.top.max(Some(seq));
        if !measured {
            return;
        }
        if !track.stalled {
            let now_ns = self.clock.ns(now);
            self.latency
                .saturating_record(now_ns.saturating_sub(intended).max(1));
            self.from_send
                .saturating_record(now_ns.saturating_sub(sent_ns).max(1));
        }
        self.delivered += 1;
        if !track.stalled {
            // The throughput window ends at the last copy that went at the server's pace.
            self.last = Some(now);
        }
        track.got += 1;
        if (track.got == self.measured || seq + 1 == self.clock.total)
            && track.counted
            && !track.finished
        {
            track.finished = true;
            self.finished += 1;
        }
    }

    fn on_block(&mut self, track: &mut Track, msg: &[u8], now: Instant) -> Item {
        let item = wire::classify(msg);
        match item {
            Item::Stamp(seq, sent) => self.on_stamp(track, seq, sent, now),
            Item::Dropped(n) => self.server_dropped += n,
            _ => {}
        }
        item
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Connecting,
    Head,
    Joining,
    Live,
    Closed,
}

struct Sub {
    stream: Option<TcpStream>,
    ws: bool,
    /// Reads nothing while messages are sent (`--stalled`).
    stalled: bool,
    phase: Phase,
    since: Instant,
    head: Vec<u8>,
    sse: SseBody,
    socket: Option<Box<WebSocket<Memory>>>,
    out: Vec<u8>,
    track: Track,
    /// It went live (whatever it is now).
    live_once: bool,
    /// [`Ctx::seen_words`], for a WebSocket that goes live inside a pump.
    seen_words: usize,
}

/// Bytes one subscriber (or the publisher) may read per wake-up; one with more to read goes
/// on the ready list, so that a peer flooding bytes neither starves the others nor holds the
/// loop past `--duration`.
const READ_BUDGET: usize = 4 * 64 * 1024;

/// What servicing a connection did.
#[derive(Default)]
struct Serviced {
    /// Why it ended, if it did.
    ended: Option<String>,
    /// It stopped at [`READ_BUDGET`] with more to read.
    more: bool,
}

/// `Ok(true)` once a non-blocking connect has completed, `Ok(false)` while it is under way.
fn connected(stream: &TcpStream) -> Result<bool, String> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Err(e.to_string()),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(MAX_BLOCK))
        .max_frame_size(Some(MAX_BLOCK))
}

/// Reads a client WebSocket's parsed messages; `on` gets each text. Pongs and close replies
/// tungstenite queues go to `out`.
fn pump_ws(
    socket: &mut WebSocket<Memory>,
    out: &mut Vec<u8>,
    mut on: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let result = loop {
        match socket.read() {
            Ok(Message::Text(t)) => {
                if let Err(e) = on(t.as_bytes()) {
                    break Err(e);
                }
            }
            // The close reply goes out with `out`, and the caller then closes the socket: a
            // server may wait for the client's end of the stream before it closes its own.
            Ok(Message::Close(frame)) => {
                break Err(match frame {
                    Some(f) => format!("closed by the server: {} {}", u16::from(f.code), f.reason),
                    None => "closed by the server".into(),
                })
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(tungstenite::Error::ConnectionClosed) => break Err("closed by the server".into()),
            Err(e) => break Err(format!("WebSocket: {e}")),
        }
    };
    let _ = socket.flush();
    out.append(&mut socket.get_mut().output);
    result
}

impl Sub {
    fn new(stream: Option<TcpStream>, ws: bool, now: Instant) -> Sub {
        Sub {
            stream,
            ws,
            stalled: false,
            phase: Phase::Connecting,
            since: now,
            head: Vec::new(),
            sse: SseBody::default(),
            socket: None,
            out: Vec::new(),
            track: Track::default(),
            live_once: false,
            seen_words: 0,
        }
    }

    /// Closes it.
    fn end(&mut self, why: String) -> Serviced {
        if let Some(stream) = self.stream.as_mut() {
            let _ = write_some(stream, &self.out); // a close reply, say; best effort
        }
        self.out = Vec::new();
        self.phase = Phase::Closed;
        self.stream = None;
        self.socket = None;
        self.head = Vec::new();
        self.sse = SseBody::default();
        Serviced {
            ended: Some(why),
            more: false,
        }
    }

    /// Makes it live: from now on its copies are tracked.
    fn go_live(&mut self, ctx: &Ctx) {
        self.phase = Phase::Live;
        self.live_once = true;
        self.track.seen = vec![0; ctx.seen_words];
    }

    /// Handles a readiness event, reading at most [`READ_BUDGET`] bytes.
    fn service(&mut self, ctx: &Ctx, tally: &mut Tally, scratch: &mut [u8]) -> Serviced {
        let Some(stream) = self.stream.as_mut() else {
            return Serviced::default();
        };
        if self.phase == Phase::Connecting {
            match connected(stream) {
                Ok(false) => return Serviced::default(),
                Err(e) => return self.end(e),
                Ok(true) => {
                    let _ = stream.set_nodelay(true);
                    if ctx.baseline {
                        self.go_live(ctx);
                        if self.ws {
                            self.socket = Some(Box::new(WebSocket::from_raw_socket(
                                Memory::default(),
                                Role::Client,
                                Some(ws_config()),
                            )));
                        }
                    } else {
                        self.out = if self.ws {
                            wire::ws_request(&ctx.host)
                        } else {
                            wire::sse_request(&ctx.host, &ctx.topic)
                        };
                        self.phase = Phase::Head;
                    }
                }
            }
        }
        let mut budget = READ_BUDGET;
        let mut more = false;
        while let Some(stream) = self.stream.as_mut() {
            if budget == 0 {
                more = true;
                break;
            }
            let want = budget.min(scratch.len());
            let n = match stream.read(&mut scratch[..want]) {
                Ok(0) => return self.end("closed by the server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.end(e.to_string()),
            };
            budget -= n;
            let now = Instant::now();
            if let Err(why) = self.feed(&scratch[..n], ctx, tally, now) {
                return self.end(why);
            }
            // A short read emptied the socket: data that arrives later raises a new edge
            // (epoll signals every arrival), so the read that would say WouldBlock is saved,
            // half of the syscalls when every wake-up brings one copy.
            if n < want {
                break;
            }
        }
        if let Some(stream) = self.stream.as_mut() {
            if !self.out.is_empty() {
                match write_some(stream, &self.out) {
                    Ok(n) => drop(self.out.drain(..n)),
                    Err(e) => return self.end(e.to_string()),
                }
            }
        }
        Serviced { ended: None, more }
    }

    /// Takes bytes read from the socket; `Ok(true)` when that made the subscriber live.
    fn feed(
        &mut self,
        data: &[u8],
        ctx: &Ctx,
        tally: &mut Tally,
        now: Instant,
    ) -> Result<bool, String> {
        match self.phase {
            Phase::Head => {
                self.head.extend_from_slice(data);
                let Some(head) = wire::parse_head(&self.head)? else {
                    return Ok(false);
                };
                let want = if self.ws { 101 } else { 200 };
                if head.status != want {
                    let line = String::from_utf8_lossy(&self.head[..head.len]);
                    let body = String::from_utf8_lossy(&self.head[head.len..]);
                    return Err(format!(
                        "{} {}",
                        line.lines().next().unwrap_or(""),
                        body.chars().take(120).collect::<String>()
                    )
                    .trim()
                    .to_string());
                }
                let rest = self.head.split_off(head.len);
                self.head = Vec::new();
                if self.ws {
                    let mut socket = Box::new(WebSocket::from_partially_read(
                        Memory::default(),
                        rest,
                        Role::Client,
                        Some(ws_config()),
                    ));
                    socket
                        .send(Message::text(wire::join_message(&ctx.topic)))
                        .map_err(|e| format!("WebSocket: {e}"))?;
                    self.socket = Some(socket);
                    self.phase = Phase::Joining;
                    self.seen_words = ctx.seen_words;
                    self.pump(tally, now)
                } else {
                    self.sse = SseBody::new(head.chunked);
                    self.go_live(ctx);
                    self.feed(&rest, ctx, tally, now)?;
                    Ok(true)
                }
            }
            Phase::Live if !self.ws => {
                let Sub { sse, track, .. } = self;
                sse.feed(data, MAX_BLOCK, |block| {
                    tally.on_block(track, block, now);
                })?;
                Ok(false)
            }
            Phase::Live | Phase::Joining => {
                if let Some(s) = self.socket.as_mut() {
                    wire::give(s.get_mut(), data);
                }
                self.pump(tally, now)
            }
            Phase::Connecting | Phase::Closed => Ok(false),
        }
    }

    /// Runs the WebSocket over what was read; `Ok(true)` when a `joined` made it live.
    fn pump(&mut self, tally: &mut Tally, now: Instant) -> Result<bool, String> {
        let seen_words = self.seen_words;
        let Sub {
            socket,
            out,
            track,
            phase,
            live_once,
            ..
        } = self;
        let Some(socket) = socket.as_mut() else {
            return Ok(false);
        };
        let mut live = false;
        pump_ws(socket, out, |text| {
            match tally.on_block(track, text, now) {
                Item::Joined if *phase == Phase::Joining => {
                    // Live from this message on, even if the same read also closes it.
                    *phase = Phase::Live;
                    *live_once = true;
                    track.seen = vec![0; seen_words];
                    live = true;
                }
                Item::Error if *phase == Phase::Joining => {
                    return Err(format!(
                        "join refused: {}",
                        String::from_utf8_lossy(&text[..text.len().min(200)])
                    ));
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(live)
    }
}

/// What every subscriber needs to know of the run.
struct Ctx {
    host: String,
    topic: String,
    baseline: bool,
    payload: usize,
    seen_words: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PubPhase {
    Connecting,
    Head,
    Ready,
    Closed,
}

/// The publisher's connection (`--publisher http|ws`).
struct NetPublisher {
    stream: Option<TcpStream>,
    kind: PublisherKind,
    phase: PubPhase,
    head: Vec<u8>,
    socket: Option<Box<WebSocket<Memory>>>,
    out: Vec<u8>,
    answers: Answers,
    /// Why it closed.
    closed: Option<String>,
}

impl NetPublisher {
    fn close(&mut self, why: String) {
        self.phase = PubPhase::Closed;
        self.stream = None;
        self.closed.get_or_insert(why);
    }

    /// Handles a readiness event, reading at most [`READ_BUDGET`] bytes; `true` when it
    /// stopped there with more to read.
    fn service(&mut self, ctx: &Ctx, scratch: &mut [u8]) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        if self.phase == PubPhase::Connecting {
            match connected(stream) {
                Ok(false) => return false,
                Err(e) => {
                    self.close(format!("cannot connect: {e}"));
                    return false;
                }
                Ok(true) => {
                    let _ = stream.set_nodelay(true);
                    if self.kind == PublisherKind::Ws {
                        self.out = wire::ws_request(&ctx.host);
                        self.phase = PubPhase::Head;
                    } else {
                        self.phase = PubPhase::Ready;
                    }
                }
            }
        }
        let mut budget = READ_BUDGET;
        let mut more = false;
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return false;
            };
            if budget == 0 {
                more = true;
                break;
            }
            let want = budget.min(scratch.len());
            let n = match stream.read(&mut scratch[..want]) {
                Ok(0) => {
                    self.close("closed by the server".into());
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.close(e.to_string());
                    return false;
                }
            };
            budget -= n;
            if let Err(e) = self.feed(&scratch[..n]) {
                self.close(e);
                return false;
            }
        }
        self.flush();
        more
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        match (self.phase, self.kind) {
            (PubPhase::Head, _) => {
                self.head.extend_from_slice(data);
                let Some(head) = wire::parse_head(&self.head)? else {
                    return Ok(());
                };
                if head.status != 101 {
                    return Err(format!("the WebSocket upgrade got {}", head.status));
                }
                let rest = self.head.split_off(head.len);
                self.socket = Some(Box::new(WebSocket::from_partially_read(
                    Memory::default(),
                    rest,
                    Role::Client,
                    Some(ws_config()),
                )));
                self.phase = PubPhase::Ready;
                self.feed(&[])
            }
            (PubPhase::Ready, PublisherKind::Http) => {
                self.answers.feed(data)?;
                if self.answers.closing {
                    return Err("the server closes the keep-alive connection".into());
                }
                Ok(())
            }
            (PubPhase::Ready, PublisherKind::Ws) => {
                let Some(socket) = self.socket.as_mut() else {
                    return Ok(());
                };
                wire::give(socket.get_mut(), data);
                let answers = &mut self.answers;
                pump_ws(socket, &mut self.out, |text| {
                    match wire::classify(text) {
                        Item::Published => answers.ok += 1,
                        Item::Error => {
                            answers.failed += 1;
                            answers.first_failure.get_or_insert_with(|| {
                                String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned()
                            });
                        }
                        _ => {}
                    }
                    Ok(())
                })
            }
            _ => Ok(()),
        }
    }

    fn flush(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            match write_some(stream, &self.out) {
                Ok(n) => drop(self.out.drain(..n)),
                Err(e) => self.close(e.to_string()),
            }
        }
    }

    fn send(&mut self, ctx: &Ctx, data: &str) {
        match self.kind {
            PublisherKind::Http => {
                wire::publish_request(&ctx.host, &ctx.topic, data, &mut self.out)
            }
            PublisherKind::Ws => {
                if let Some(socket) = self.socket.as_mut() {
                    let msg = Message::text(wire::publish_message(&ctx.topic, data));
                    if let Err(e) = socket.send(msg) {
                        return self.close(format!("WebSocket: {e}"));
                    }
                    self.out.append(&mut socket.get_mut().output);
                }
            }
        }
        self.flush();
    }
}

enum Publisher {
    Net(NetPublisher),
    Baseline(Baseline),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    Connecting,
    Settling(Instant),
    Publishing,
    Draining(Instant),
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Connecting => "connecting",
            Stage::Settling(_) => "settling",
            Stage::Publishing => "publishing",
            Stage::Draining(_) => "draining",
        }
    }
}

/// Where the subscribers are, counted.
#[derive(Default)]
struct Counts {
    /// Connecting, or waiting for their answer or `joined`.
    in_flight: usize,
    /// Went live.
    ready: usize,
    /// Ended before they went live.
    failed: usize,
    /// Ended after they went live.
    disconnected: usize,
    /// Of them, `--stalled` ones.
    stalled_disconnected: usize,
    first_failure: Option<String>,
}

impl Counts {
    /// Counts what one service did to `sub`, from its phase `before` it: a subscriber can go
    /// live and end in the same read, so the phases are compared, not the last change.
    fn account(&mut self, before: Phase, sub: &mut Sub, ended: Option<String>, tally: &mut Tally) {
        let waiting = |p| matches!(p, Phase::Connecting | Phase::Head | Phase::Joining);
        if waiting(before) && !waiting(sub.phase) {
            self.in_flight -= 1;
            if sub.live_once {
                self.ready += 1;
            } else {
                self.failed += 1;
                if let Some(why) = ended {
                    self.first_failure.get_or_insert(why);
                }
            }
        }
        if before != Phase::Closed && sub.phase == Phase::Closed && sub.live_once {
            self.disconnected += 1;
            self.stalled_disconnected += usize::from(sub.stalled);
            finish(&mut sub.track, tally);
        }
    }
}

/// A subscriber that closed: nothing more to wait for from it.
fn finish(track: &mut Track, tally: &mut Tally) {
    if track.counted && !track.finished {
        track.finished = true;
        tally.finished += 1;
    }
}

/// The receive buffer of a `--stalled` subscriber (the kernel doubles it).
const STALLED_RCVBUF: usize = 4096;

/// A non-blocking connect with a small receive buffer, set before the handshake so that the
/// window it advertises stays small.
fn connect_small(addr: std::net::SocketAddr, rcvbuf: usize) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_recv_buffer_size(rcvbuf)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if Errno::from_io_error(&e) == Some(Errno::INPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Sends every message whose intended time has come, each stamped with its actual send time;
/// records how late each measured one went out.
fn send_due(
    publisher: &mut Publisher,
    ctx: &Ctx,
    clock: &Clock,
    sent: &mut u64,
    slip: &mut Histogram<u64>,
) {
    while *sent < clock.total {
        let Some(due) = clock.intended(*sent) else {
            return;
        };
        let now = Instant::now();
        if due > now {
            return;
        }
        let sent_ns = clock.ns(now);
        if *sent >= clock.warmup {
            let intended = clock.intended_ns(*sent).unwrap_or(sent_ns);
            slip.saturating_record(sent_ns.saturating_sub(intended).max(1));
        }
        let data = wire::message_data(*sent, sent_ns, ctx.payload);
        match publisher {
            Publisher::Net(p) => p.send(ctx, &data),
            Publisher::Baseline(b) => {
                // The very bytes our server writes for this event on each transport.
                let id = EventId {
                    epoch: 1,
                    seq: *sent + 1,
                };
                let topic = ctx.topic.as_str().into();
                let event = Event::new(id, topic, wire::EVENT, &data, None, now);
                b.publish(event.sse_bytes(), event.ws_frame());
            }
        }
        *sent += 1;
    }
}

/// Runs the benchmark. `Err` is a run that could not be made (one line).
pub fn run(o: &Options, progress: bool) -> Result<Outcome, String> {
    let epoch = Instant::now();
    let hard_stop = epoch + o.duration;
    let needed = o.connections as u64 + 16;
    if let Some(limit) = fd_limit().filter(|l| *l < needed) {
        eprintln!(
            "mcp-stream bench: warning: the open-file limit is {limit}, below the {needed} this run needs: raise it with `ulimit -n`"
        );
    }
    let rss_before = match o.pid {
        Some(pid) => Some(
            rss_kib(pid)
                .ok_or_else(|| format!("--pid {pid}: no such process's status in /proc"))?,
        ),
        None => None,
    };
    let mut poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
    let mut timer = Timer::new(&poll).map_err(|e| format!("cannot create a timerfd: {e}"))?;
    let warmup = o.warmup_messages();
    let total = warmup + o.messages;
    let ctx = Ctx {
        host: o.host.clone(),
        topic: o.topic.clone(),
        baseline: o.baseline,
        payload: o.payload,
        seen_words: total.div_ceil(64) as usize,
    };
    let mut tally = Tally {
        clock: Clock {
            epoch,
            start: None,
            period_ns: 1e9 / o.rate,
            warmup,
            total,
        },
        measured: o.messages,
        delivered: 0,
        duplicates: 0,
        reordered: 0,
        server_dropped: 0,
        finished: 0,
        latency: histogram(o.duration),
        from_send: histogram(o.duration),
        last: None,
    };
    let mut slip = histogram(o.duration);

    let mut publisher = if o.baseline {
        Publisher::Baseline(Baseline::start()?)
    } else {
        let mut stream =
            TcpStream::connect(o.addr).map_err(|e| fd_error(&e, "the publisher's connect"))?;
        poll.registry()
            .register(
                &mut stream,
                PUBLISHER,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        Publisher::Net(NetPublisher {
            stream: Some(stream),
            kind: o.publisher,
            phase: PubPhase::Connecting,
            head: Vec::new(),
            socket: None,
            out: Vec::new(),
            answers: Answers::default(),
            closed: None,
        })
    };

    let mut subs: Vec<Sub> = Vec::with_capacity(o.connections);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let mut stage = Stage::Connecting;
    let connect_begin = Instant::now();
    let mut connect_secs = 0.0;
    let mut c = Counts::default();
    // Subscribers stopped at their read budget, serviced again after the next poll (which
    // then does not wait); `pub_again` is the same for the publisher.
    let mut again: Vec<usize> = Vec::new();
    let mut pub_again = false;
    let mut next_scan = connect_begin;
    let mut next_progress = connect_begin;
    let mut sent = 0u64;
    let mut counted = 0usize;
    let mut rss = rss_before.map(|before| Rss {
        before,
        ..Rss::default()
    });
    let mut stopped_early = None;
    // The tool's own load from publishing on: time in `poll` against wall time.
    let mut busy_since: Option<Instant> = None;
    let mut idle = Duration::ZERO;

    loop {
        let now = Instant::now();
        if now >= hard_stop {
            let why = format!(
                "--duration {} s reached while {}",
                o.duration.as_secs_f64(),
                stage.name()
            );
            if sent == 0 {
                // Nothing was measured: not a run.
                return Err(format!(
                    "{why} ({} ready, {} failed, {} in flight of {}){}",
                    c.ready,
                    c.failed,
                    c.in_flight,
                    o.connections,
                    c.first_failure
                        .as_deref()
                        .map(|f| format!("; first failure: {f}"))
                        .unwrap_or_default()
                ));
            }
            stopped_early = Some(why);
            break;
        }
        match stage {
            Stage::Connecting => {
                while subs.len() < o.connections && c.in_flight < MAX_IN_FLIGHT {
                    let due = connect_begin + Duration::from_secs_f64(subs.len() as f64 / o.ramp);
                    if due > now {
                        break;
                    }
                    let i = subs.len();
                    let ws = o.transport.is_ws(i);
                    let addr = match &publisher {
                        Publisher::Baseline(b) if ws => b.ws_addr,
                        Publisher::Baseline(b) => b.sse_addr,
                        Publisher::Net(_) => o.addr,
                    };
                    let stalled = i < o.stalled;
                    let stream = if stalled {
                        connect_small(addr, STALLED_RCVBUF)
                    } else {
                        TcpStream::connect(addr)
                    };
                    match stream {
                        Ok(mut stream) => {
                            poll.registry()
                                .register(
                                    &mut stream,
                                    Token(i),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .map_err(|e| format!("register: {e}"))?;
                            let mut sub = Sub::new(Some(stream), ws, now);
                            sub.stalled = stalled;
                            sub.track.stalled = stalled;
                            subs.push(sub);
                            c.in_flight += 1;
                        }
                        Err(e) if out_of_fds(&e) => {
                            return Err(fd_error(
                                &e,
                                &format!("subscriber {} of {}", i + 1, o.connections),
                            ))
                        }
                        Err(e) => {
                            let mut sub = Sub::new(None, ws, now);
                            sub.phase = Phase::Closed;
                            subs.push(sub);
                            c.failed += 1;
                            c.first_failure.get_or_insert(e.to_string());
                        }
                    }
                }
                if now >= next_scan {
                    next_scan = now + Duration::from_millis(250);
                    for sub in subs.iter_mut() {
                        let waiting =
                            matches!(sub.phase, Phase::Connecting | Phase::Head | Phase::Joining);
                        if waiting && now.duration_since(sub.since) > CONNECT_TIMEOUT {
                            let before = sub.phase;
                            let why = format!("no answer within {} s", CONNECT_TIMEOUT.as_secs());
                            let ended = sub.end(why).ended;
                            c.account(before, sub, ended, &mut tally);
                        }
                    }
                }
                let publisher_ready = match &publisher {
                    Publisher::Net(p) => {
                        if let Some(why) = &p.closed {
                            return Err(format!("the publisher: {why}"));
                        }
                        p.phase == PubPhase::Ready
                    }
                    Publisher::Baseline(b) => {
                        if let Some(e) = b.error() {
                            return Err(e);
                        }
                        b.accepted() >= c.ready
                    }
                };
                if subs.len() == o.connections && c.in_flight == 0 && publisher_ready {
                    connect_secs = now.duration_since(connect_begin).as_secs_f64();
                    if c.ready == 0 {
                        return Err(format!(
                            "no subscriber connected to {}: {}",
                            o.url,
                            c.first_failure.as_deref().unwrap_or("?")
                        ));
                    }
                    stage = Stage::Settling(now + SETTLE);
                }
            }
            Stage::Settling(until) => {
                if now >= until {
                    if let (Some(r), Some(pid)) = (rss.as_mut(), o.pid) {
                        r.connected = rss_kib(pid);
                    }
                    for sub in subs.iter_mut().filter(|s| s.phase == Phase::Live) {
                        sub.track.counted = true;
                        counted += 1;
                    }
                    tally.clock.start = Some(now + Duration::from_millis(2));
                    busy_since = Some(now);
                    stage = Stage::Publishing;
                }
            }
            Stage::Publishing => {
                send_due(&mut publisher, &ctx, &tally.clock, &mut sent, &mut slip);
                if let Publisher::Net(NetPublisher {
                    closed: Some(why), ..
                }) = &publisher
                {
                    stopped_early = Some(format!("the publisher's connection: {why}"));
                    stage = Stage::Draining(now + o.drain);
                } else if sent == total {
                    stage = Stage::Draining(now + o.drain);
                }
                if matches!(stage, Stage::Draining(_)) {
                    // The stalled subscribers read what is left of their streams now.
                    for (i, sub) in subs.iter_mut().enumerate().take(o.stalled) {
                        let before = sub.phase;
                        let done = sub.service(&ctx, &mut tally, &mut scratch);
                        c.account(before, sub, done.ended, &mut tally);
                        if done.more {
                            again.push(i);
                        }
                    }
                }
            }
            Stage::Draining(until) => {
                if now >= until || tally.finished >= counted {
                    break;
                }
            }
        }

        if progress && now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            let line = match stage {
                Stage::Connecting | Stage::Settling(_) => format!(
                    "{}: {} ready, {} failed, {} in flight of {}",
                    stage.name(),
                    c.ready,
                    c.failed,
                    c.in_flight,
                    o.connections
                ),
                _ => format!(
                    "{}: sent {sent} of {total}, {} copies delivered",
                    stage.name(),
                    tally.delivered
                ),
            };
            eprint!("\r\x1b[K{line}");
        }

        let mut wake = hard_stop;
        match stage {
            Stage::Connecting => {
                wake = wake.min(now + Duration::from_millis(50));
            }
            Stage::Settling(until) | Stage::Draining(until) => wake = wake.min(until),
            Stage::Publishing => {
                if let Some(due) = tally.clock.intended(sent) {
                    timer.arm(due, now);
                }
            }
        }
        if progress {
            wake = wake.min(next_progress);
        }
        let timeout = if again.is_empty() && !pub_again {
            wake.saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        let polled = Instant::now();
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        if busy_since.is_some() {
            idle += polled.elapsed();
        }
        let retry = std::mem::take(&mut again);
        let tokens = events
            .iter()
            .map(|e| e.token())
            .chain(std::mem::take(&mut pub_again).then_some(PUBLISHER))
            .chain(retry.into_iter().map(Token));
        for (n, token) in tokens.enumerate() {
            // Reading a thousand sockets takes a while: a message falling due meanwhile goes
            // out now, not after the last of them; and --duration holds inside the loop too.
            if n % 32 == 31 {
                if Instant::now() >= hard_stop {
                    break;
                }
                if stage == Stage::Publishing {
                    send_due(&mut publisher, &ctx, &tally.clock, &mut sent, &mut slip);
                }
            }
            match token {
                TIMER => timer.fired(),
                PUBLISHER => {
                    if let Publisher::Net(p) = &mut publisher {
                        pub_again |= p.service(&ctx, &mut scratch);
                    }
                }
                Token(i) if i < subs.len() => {
                    let sub = &mut subs[i];
                    if sub.stalled && stage == Stage::Publishing && sub.phase == Phase::Live {
                        continue;
                    }
                    let before = sub.phase;
                    let done = sub.service(&ctx, &mut tally, &mut scratch);
                    c.account(before, sub, done.ended, &mut tally);
                    if done.more {
                        again.push(i);
                    }
                }
                Token(_) => {}
            }
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    let tool_busy_percent = busy_since.map(|since| {
        let wall = since.elapsed().as_secs_f64();
        if wall > 0.0 {
            (100.0 * (1.0 - idle.as_secs_f64() / wall)).clamp(0.0, 100.0)
        } else {
            0.0
        }
    });
    if let (Some(r), Some(pid)) = (rss.as_mut(), o.pid) {
        r.end = rss_kib(pid);
    }
    let (acked, publish_failures, first_publish_failure) = match &publisher {
        Publisher::Net(p) => (
            p.answers.ok,
            p.answers.failed,
            p.answers.first_failure.clone(),
        ),
        Publisher::Baseline(_) => (sent, 0, None),
    };
    let sent_measured = sent.saturating_sub(warmup);
    let window_start = tally.clock.intended(warmup.min(sent));
    let window_secs = match (window_start, tally.last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(Outcome {
        connected: c.ready,
        counted,
        connect_failures: c.failed,
        first_connect_failure: c.first_failure,
        connect_secs,
        warmup_sent: sent.min(warmup),
        sent: sent_measured,
        acked,
        publish_failures,
        first_publish_failure,
        expected: counted as u64 * sent_measured,
        delivered: tally.delivered,
        duplicates: tally.duplicates,
        reordered: tally.reordered,
        server_dropped: tally.server_dropped,
        disconnected: c.disconnected,
        stalled_disconnected: c.stalled_disconnected,
        tool_busy_percent,
        latency: tally.latency,
        from_send: tally.from_send,
        slip,
        window_secs,
        elapsed_secs: epoch.elapsed().as_secs_f64(),
        stopped_early,
        rss,
    })
}
