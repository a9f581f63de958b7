//! The gateway's child processes (`mcp.stdio`): started when the engine asks, fed and read over
//! non-blocking pipes registered in the server's poll (no thread per child), ended when the
//! engine lets them go, and always reaped.
//!
//! Each child runs in a process group of its own, so that ending it reaches what it started
//! (`npx` runs the server as a grandchild, `sh -c` may too). Ending is gentle first: its stdin
//! closes, which is how an MCP server is told to exit; after `grace_ms` the group gets SIGTERM,
//! after as long again SIGKILL. The group is followed until no process is left in it, even when
//! the child itself (the group's leader) has gone first.
//!
//! Exits are noticed without SIGCHLD (a host's handler stays the host's): a child whose stdout
//! or stdin closes is gone, and is polled with `try_wait` every [`REAP_POLL`], for up to
//! [`EXIT_WAIT`], to report how it ended; a child being ended is polled until it is reaped, so no
//! zombie is left. Its stderr is logged line by line, with its session, to the end: what it
//! says while crashing or shutting down is kept. Dropping the server kills and reaps whatever
//! is left.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};

use super::{Server, READ_BUDGET};
use crate::config::StdioCommand;
use crate::proto::engine::ChildId;
use crate::proto::ndjson::{Line, LineReader};

/// How often a child that has gone, or is being ended, is checked for its exit.
pub(super) const REAP_POLL: Duration = Duration::from_millis(20);
/// How long a child whose pipe closed is given to exit before its session is told only that
/// the pipe closed.
const EXIT_WAIT: Duration = Duration::from_millis(500);
/// The longest line of a child's stderr that is logged whole.
const MAX_STDERR_LINE: usize = 8 * 1024;
/// The most bytes of a child's stderr read (and logged) per wake-up: a child that floods its
/// stderr slows its own log, not the server.
const STDERR_BUDGET: usize = 16 * 1024;

/// A child's pipes, as its tokens number them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pipe {
    Stdin,
    Stdout,
    Stderr,
}

impl Pipe {
    /// Tokens per child.
    pub(super) const COUNT: usize = 3;

    pub(super) fn offset(self) -> usize {
        self as usize
    }

    pub(super) fn from_offset(offset: usize) -> Option<Pipe> {
        [Pipe::Stdin, Pipe::Stdout, Pipe::Stderr]
            .get(offset)
            .copied()
    }
}

/// Every child process of the gateway.
#[derive(Default)]
pub(super) struct Children {
    /// Running children, by the engine's slot index.
    live: Vec<Option<Live>>,
    /// Children let go by the engine whose process group is not gone yet.
    dying: Vec<Dying>,
    /// Running children with a closed pipe, whose exit is not yet reported.
    gone: Vec<ChildId>,
    /// Pipes left unread when their budget ran out.
    ready: VecDeque<(ChildId, Pipe)>,
}

struct Live {
    id: ChildId,
    process: Child,
    stdin: Option<Sender>,
    stdout: Option<Receiver>,
    stderr: Stderr,
    /// One of its pipes closed: when, and what to say if no exit status comes.
    gone: Option<(Instant, &'static str)>,
    /// Its stdout, its stderr is on the ready list.
    ready: [bool; 2],
}

/// A child's stderr and what it has said of a line so far, logged with its session.
struct Stderr {
    pipe: Option<Receiver>,
    lines: LineReader,
    label: String,
}

struct Dying {
    process: Child,
    group: Pid,
    /// The child itself has been reaped (others of its group may be left).
    reaped: bool,
    stderr: Stderr,
    stage: Stage,
    /// When the next stage starts.
    next: Instant,
    grace: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    InputClosed,
    Terminated,
    Killed,
}

impl Children {
    /// Whether no child is running or being ended.
    pub(super) fn is_empty(&self) -> bool {
        self.dying.is_empty() && self.live.iter().all(Option::is_none)
    }

    /// Whether stdout input is left over from a budget.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// When children must next be looked at: the next poll, while one is gone or being ended.
    pub(super) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        (!self.gone.is_empty() || !self.dying.is_empty()).then(|| now + REAP_POLL)
    }

    /// The child at slot `index`, if one runs there.
    pub(super) fn id_at(&self, index: usize) -> Option<ChildId> {
        self.live.get(index)?.as_ref().map(|l| l.id)
    }

    fn live_mut(&mut self, id: ChildId) -> Option<&mut Live> {
        self.live
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|l| l.id == id)
    }
}

impl Drop for Children {
    /// Kills and reaps every child left: none outlives the server.
    fn drop(&mut self) {
        let live = self
            .live
            .iter_mut()
            .flatten()
            .map(|l| (&mut l.process, false));
        let dying = self.dying.iter_mut().map(|d| (&mut d.process, d.reaped));
        for (process, reaped) in live.chain(dying) {
            let _ = kill_process_group(Pid::from_child(process), Signal::KILL);
            if !reaped {
                let _ = process.wait();
            }
        }
    }
}

impl Stderr {
    /// Logs what the pipe holds now, at most [`STDERR_BUDGET`] bytes; at its end (or with
    /// `last`) the unfinished line too. Returns whether the budget ran out before the pipe
    /// was empty.
    fn drain(&mut self, buffer: &mut [u8], last: bool) -> bool {
        let label = &self.label;
        let log = |line: Line<'_>| match line {
            Line::Complete(line) => {
                log::info!(
                    "MCP server of session {label}: {}",
                    String::from_utf8_lossy(line)
                );
            }
            Line::Oversized(n) => {
                log::info!("MCP server of session {label}: (a stderr line of {n} bytes)");
            }
        };
        let mut ended = last;
        let mut budget = STDERR_BUDGET;
        let size = STDERR_BUDGET.min(buffer.len());
        let buffer = &mut buffer[..size];
        while let Some(pipe) = self.pipe.as_mut() {
            if budget == 0 {
                break;
            }
            match pipe.read(buffer) {
                Ok(n) if n > 0 => {
                    self.lines.push(&buffer[..n], log);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    self.pipe = None;
                    ended = true;
                }
            }
        }
        if ended {
            self.lines.finish(log);
        }
        budget == 0 && self.pipe.is_some()
    }
}

impl Server {
    /// Starts child `id` with `mcp.stdio`, its pipes in the poll; a failure ends its session.
    pub(super) fn child_spawn(&mut self, now: Instant, id: ChildId) {
        let (Some(registry), Some(layout)) = (&self.registry, self.layout) else {
            return;
        };
        let Some(command) = self.engine.config().mcp.stdio.clone() else {
            return;
        };
        if self.engine.child_label(id).is_none() {
            // Its session ended in the same turn: its End follows, and nothing is started.
            return;
        }
        match start(&command, registry, |pipe| layout.child(id, pipe)) {
            Ok((process, stdin, stdout, stderr)) => {
                let label = self.engine.child_label(id).unwrap_or("?").to_string();
                log::debug!(
                    "MCP server of session {label}: started `{}` as {}",
                    command.display,
                    process.id()
                );
                let index = id.index as usize;
                if self.children.live.len() <= index {
                    self.children.live.resize_with(index + 1, || None);
                }
                self.children.live[index] = Some(Live {
                    id,
                    process,
                    stdin: Some(stdin),
                    stdout: Some(stdout),
                    stderr: Stderr {
                        pipe: Some(stderr),
                        lines: LineReader::new(MAX_STDERR_LINE),
                        label,
                    },
                    gone: None,
                    ready: [false; 2],
                });
            }
            Err(e) => {
                let reason = format!("could not be started (`{}`): {e}", command.display);
                self.engine.handle_child_exit(now, id, &reason);
            }
        }
    }

    /// Writes `id`'s pending input until it is all written or the pipe is full.
    pub(super) fn child_flush(&mut self, now: Instant, id: ChildId) {
        loop {
            let Some(stdin) = self.children.live_mut(id).and_then(|l| l.stdin.as_mut()) else {
                return;
            };
            let input = self.engine.child_input(id);
            if input.is_empty() {
                return;
            }
            match stdin.write(input) {
                Ok(n) => self.engine.consume_child_input(id, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("child {id}: stdin: {e}");
                    return self.child_gone(now, id, Pipe::Stdin, "closed its input");
                }
            }
        }
    }

    /// Reads `id`'s stdout (at most [`READ_BUDGET`] bytes) into the engine.
    pub(super) fn child_read(&mut self, now: Instant, id: ChildId) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(stdout) = self.children.live_mut(id).and_then(|l| l.stdout.as_mut()) else {
                return;
            };
            match stdout.read(&mut self.read_buffer) {
                Ok(0) => return self.child_gone(now, id, Pipe::Stdout, "closed its output"),
                Ok(n) => {
                    self.engine
                        .handle_child_output(now, id, &self.read_buffer[..n]);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return self.child_ready(id, Pipe::Stdout);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("child {id}: stdout: {e}");
                    return self.child_gone(now, id, Pipe::Stdout, "closed its output");
                }
            }
        }
    }

    /// Logs what `id` wrote on its stderr.
    pub(super) fn child_read_stderr(&mut self, id: ChildId) {
        let Some(live) = self.children.live_mut(id) else {
            return;
        };
        if live.stderr.drain(&mut self.read_buffer, false) {
            self.child_ready(id, Pipe::Stderr);
        }
    }

    /// Puts `pipe` of `id` on the ready list: its budget ran out with input left.
    fn child_ready(&mut self, id: ChildId, pipe: Pipe) {
        let slot = usize::from(pipe == Pipe::Stderr);
        if let Some(live) = self.children.live_mut(id) {
            if !live.ready[slot] {
                live.ready[slot] = true;
                self.children.ready.push_back((id, pipe));
            }
        }
    }

    /// Reads what the ready list holds.
    pub(super) fn child_read_ready(&mut self, now: Instant) {
        for _ in 0..self.children.ready.len() {
            let Some((id, pipe)) = self.children.ready.pop_front() else {
                return;
            };
            let slot = usize::from(pipe == Pipe::Stderr);
            if let Some(live) = self.children.live_mut(id) {
                live.ready[slot] = false;
                match pipe {
                    Pipe::Stderr => self.child_read_stderr(id),
                    _ => self.child_read(now, id),
                }
            }
        }
    }

    /// `pipe` of `id` closed: the child is gone, or going. Its exit is waited for (briefly)
    /// to tell its session how it ended.
    fn child_gone(&mut self, now: Instant, id: ChildId, pipe: Pipe, otherwise: &'static str) {
        let registry = self.registry.as_ref();
        let Some(live) = self.children.live_mut(id) else {
            return;
        };
        match pipe {
            Pipe::Stdin => {
                if let (Some(mut stdin), Some(registry)) = (live.stdin.take(), registry) {
                    let _ = registry.deregister(&mut stdin);
                }
            }
            _ => {
                if let (Some(mut stdout), Some(registry)) = (live.stdout.take(), registry) {
                    let _ = registry.deregister(&mut stdout);
                }
            }
        }
        if live.gone.is_none() {
            live.gone = Some((now, otherwise));
            self.children.gone.push(id);
        }
        self.child_exit_check(now, id);
    }

    /// Tells the engine that a gone child `id` ended, once its exit status is known (or once
    /// [`EXIT_WAIT`] has passed without one), after logging the last of its stderr.
    fn child_exit_check(&mut self, now: Instant, id: ChildId) {
        let Some(live) = self.children.live_mut(id) else {
            return;
        };
        let Some((since, otherwise)) = live.gone else {
            return;
        };
        let reason = match live.process.try_wait() {
            Ok(Some(status)) => describe(status),
            Ok(None) if now < since + EXIT_WAIT => return,
            _ => otherwise.to_string(),
        };
        if live.stdout.is_some() {
            // What it wrote before it went comes first (it reports the exit itself at the end
            // of its stdout).
            self.child_read(now, id);
            if self.engine.child_label(id).is_none() {
                return;
            }
        }
        if let Some(live) = self.children.live_mut(id) {
            live.stderr.drain(&mut self.read_buffer, true);
        }
        self.engine.handle_child_exit(now, id, &reason);
    }

    /// The engine let `id` go: its stdin closes, and it is ended and reaped.
    pub(super) fn child_end(&mut self, now: Instant, id: ChildId) {
        let Some(slot) = self.children.live.get_mut(id.index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|l| l.id != id) {
            // Never started (it failed, or its session ended first): nothing to reap.
            return self.engine.handle_child_reaped();
        }
        let Some(mut live) = slot.take() else {
            return;
        };
        if let Some(registry) = &self.registry {
            if let Some(stdin) = live.stdin.as_mut() {
                let _ = registry.deregister(stdin);
            }
            if let Some(stdout) = live.stdout.as_mut() {
                let _ = registry.deregister(stdout);
            }
            if let Some(stderr) = live.stderr.pipe.as_mut() {
                // From now on it is read at every reap poll: its slot's tokens go to the next.
                let _ = registry.deregister(stderr);
            }
        }
        let grace = self
            .engine
            .config()
            .mcp
            .stdio
            .as_ref()
            .map_or(Duration::ZERO, StdioCommand::grace);
        // Closing its stdin is the MCP way of saying "exit".
        drop((live.stdin, live.stdout));
        self.children.dying.push(Dying {
            group: Pid::from_child(&live.process),
            process: live.process,
            reaped: false,
            stderr: live.stderr,
            stage: Stage::InputClosed,
            next: now + grace,
            grace,
        });
        self.reap(now);
    }

    /// Reports the gone children whose exit is known; reaps the children being ended, and
    /// moves their process groups on to SIGTERM, then SIGKILL, until no process is left in them.
    pub(super) fn reap(&mut self, now: Instant) {
        let gone = std::mem::take(&mut self.children.gone);
        for &id in &gone {
            self.child_exit_check(now, id);
        }
        // Those not reported yet (still waiting for their exit status) stay on the list.
        let waiting: Vec<ChildId> = gone
            .into_iter()
            .filter(|&id| self.children.live_mut(id).is_some_and(|l| l.gone.is_some()))
            .collect();
        self.children.gone.extend(waiting);
        let buffer = &mut self.read_buffer;
        let before = self.children.dying.len();
        self.children.dying.retain_mut(|d| {
            d.stderr.drain(buffer, false);
            let pid = d.process.id();
            if !d.reaped {
                match d.process.try_wait() {
                    Ok(Some(status)) => {
                        log::debug!("child {pid} reaped: {}", describe(status));
                        d.reaped = true;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!("child {pid}: wait: {e}");
                        d.reaped = true;
                    }
                }
            }
            // The group lives on while any process of it does (kill with signal 0 tests that).
            if d.reaped && test_kill_process_group(d.group).is_err() {
                d.stderr.drain(buffer, true);
                return false;
            }
            if now < d.next {
                return true;
            }
            let signal = match d.stage {
                Stage::InputClosed => Signal::TERM,
                Stage::Terminated => Signal::KILL,
                Stage::Killed if d.reaped => {
                    // What is left of the group after SIGKILL and a grace period is no longer
                    // ours to wait for (a zombie that some other parent must reap).
                    log::warn!(
                        "child {pid}: its process group outlived SIGKILL; no longer waited for"
                    );
                    d.stderr.drain(buffer, true);
                    return false;
                }
                Stage::Killed => Signal::KILL,
            };
            let (after, sending) = match d.stage {
                Stage::InputClosed => ("its input closed", "SIGTERM"),
                _ => ("SIGTERM", "SIGKILL"),
            };
            log::info!(
                "child {pid}: its process group still runs {:?} after {after}; sending {sending}",
                d.grace
            );
            let _ = kill_process_group(d.group, signal);
            d.stage = match d.stage {
                Stage::InputClosed => Stage::Terminated,
                _ => Stage::Killed,
            };
            d.next = now + d.grace;
            true
        });
        for _ in self.children.dying.len()..before {
            self.engine.handle_child_reaped();
        }
    }
}

/// Starts `command` with piped, non-blocking stdio registered under the tokens `token` gives.
fn start(
    command: &StdioCommand,
    registry: &Registry,
    token: impl Fn(Pipe) -> Token,
) -> io::Result<(Child, Sender, Receiver, Receiver)> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &command.cwd {
        cmd.current_dir(cwd);
    }
    let mut process = cmd.spawn()?;
    let pipes = (
        process.stdin.take(),
        process.stdout.take(),
        process.stderr.take(),
    );
    let (Some(stdin), Some(stdout), Some(stderr)) = pipes else {
        return Err(io::Error::other("no pipes"));
    };
    let (mut stdin, mut stdout, mut stderr) = (
        Sender::from(stdin),
        Receiver::from(stdout),
        Receiver::from(stderr),
    );
    let registered = (|| {
        stdin.set_nonblocking(true)?;
        stdout.set_nonblocking(true)?;
        stderr.set_nonblocking(true)?;
        registry.register(&mut stdin, token(Pipe::Stdin), Interest::WRITABLE)?;
        registry.register(&mut stdout, token(Pipe::Stdout), Interest::READABLE)?;
        registry.register(&mut stderr, token(Pipe::Stderr), Interest::READABLE)
    })();
    if let Err(e) = registered {
        let _ = registry.deregister(&mut stdin);
        let _ = registry.deregister(&mut stdout);
        let _ = registry.deregister(&mut stderr);
        let _ = kill_process_group(Pid::from_child(&process), Signal::KILL);
        let _ = process.wait();
        return Err(e);
    }
    Ok((process, stdin, stdout, stderr))
}

/// "exited with status N" or "was killed by signal N".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}
