//! The gateway's child processes (`mcp.stdio`): started when the engine asks, fed and read over
//! non-blocking pipes registered in the server's poll (no thread per child), ended when the
//! engine lets them go, and always reaped.
//!
//! Each child runs in a process group of its own, so that ending it reaches what it started
//! (`npx` runs the server as a grandchild). Ending is gentle first: its stdin closes, which is
//! how an MCP server is told to exit; after `grace_ms` the group gets SIGTERM, after as long
//! again SIGKILL. Exits are noticed without SIGCHLD (a host's handler stays the host's): a child
//! whose stdout closes is taken as gone, and a child being ended is polled with `try_wait` every
//! [`REAP_POLL`] until it is reaped, so no zombie is left. Dropping the server kills and reaps
//! whatever is left.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use rustix::process::{kill_process_group, Pid, Signal};

use super::{Server, READ_BUDGET};
use crate::config::StdioCommand;
use crate::proto::engine::ChildId;

/// How often a child being ended is checked for its exit.
pub(super) const REAP_POLL: Duration = Duration::from_millis(20);

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
    /// Children let go by the engine and not yet reaped.
    dying: Vec<Dying>,
    /// Children whose stdout was left unread when their budget ran out.
    ready: VecDeque<ChildId>,
}

struct Live {
    id: ChildId,
    process: Child,
    stdin: Option<Sender>,
    stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    /// It is on the ready list.
    ready: bool,
}

struct Dying {
    process: Child,
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
    /// Whether no child is running or waiting to be reaped.
    pub(super) fn is_empty(&self) -> bool {
        self.dying.is_empty() && self.live.iter().all(Option::is_none)
    }

    /// Whether stdout input is left over from a budget.
    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// When children must next be looked at: the next reap poll.
    pub(super) fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let first = self.dying.iter().map(|d| d.next).min()?;
        Some(first.min(now + REAP_POLL))
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
        let live = self.live.iter_mut().flatten().map(|l| &mut l.process);
        for process in live.chain(self.dying.iter_mut().map(|d| &mut d.process)) {
            if let Ok(None) = process.try_wait() {
                let _ = kill_process_group(Pid::from_child(process), Signal::KILL);
                let _ = process.wait();
            }
        }
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
        match start(&command, registry, |pipe| layout.child(id, pipe)) {
            Ok((process, stdin, stdout, stderr)) => {
                log::debug!(
                    "child {id}: started `{}` as {}",
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
                    stderr: Some(stderr),
                    ready: false,
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
                    let reason = self.child_exit_reason(id, "closed its input");
                    return self.engine.handle_child_exit(now, id, &reason);
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
                Ok(0) => {
                    let reason = self.child_exit_reason(id, "closed its output");
                    return self.engine.handle_child_exit(now, id, &reason);
                }
                Ok(n) => {
                    self.engine
                        .handle_child_output(now, id, &self.read_buffer[..n]);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        if let Some(live) = self.children.live_mut(id) {
                            if !live.ready {
                                live.ready = true;
                                self.children.ready.push_back(id);
                            }
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = self.child_exit_reason(id, &format!("broke its output ({e})"));
                    return self.engine.handle_child_exit(now, id, &reason);
                }
            }
        }
    }

    /// Reads `id`'s stderr into the engine's log; its end is not the child's.
    pub(super) fn child_read_stderr(&mut self, id: ChildId) {
        let registry = self.registry.as_ref();
        loop {
            let Some(live) = self.children.live_mut(id) else {
                return;
            };
            let Some(stderr) = live.stderr.as_mut() else {
                return;
            };
            match stderr.read(&mut self.read_buffer) {
                Ok(n) if n > 0 => self.engine.handle_child_stderr(id, &self.read_buffer[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => {
                    if let (Some(mut stderr), Some(registry)) = (live.stderr.take(), registry) {
                        let _ = registry.deregister(&mut stderr);
                    }
                    return;
                }
            }
        }
    }

    /// Reads what the ready list holds.
    pub(super) fn child_read_ready(&mut self, now: Instant) {
        for _ in 0..self.children.ready.len() {
            let Some(id) = self.children.ready.pop_front() else {
                return;
            };
            if let Some(live) = self.children.live_mut(id) {
                live.ready = false;
                self.child_read(now, id);
            }
        }
    }

    /// The engine let `id` go: its pipes close and it is ended and reaped.
    pub(super) fn child_end(&mut self, now: Instant, id: ChildId) {
        let Some(slot) = self.children.live.get_mut(id.index as usize) else {
            return;
        };
        if slot.as_ref().is_none_or(|l| l.id != id) {
            return;
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
            if let Some(stderr) = live.stderr.as_mut() {
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
        // Dropping the pipes closes its stdin: the MCP way of saying "exit".
        drop((live.stdin, live.stdout, live.stderr));
        self.children.dying.push(Dying {
            process: live.process,
            stage: Stage::InputClosed,
            next: now + grace,
            grace,
        });
        self.reap(now);
    }

    /// Reaps the children that have exited; moves the others on to SIGTERM, then SIGKILL.
    pub(super) fn reap(&mut self, now: Instant) {
        self.children.dying.retain_mut(|d| {
            match d.process.try_wait() {
                Ok(Some(status)) => {
                    log::debug!("child {} reaped: {}", d.process.id(), describe(status));
                    return false;
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("child {}: wait: {e}", d.process.id());
                    return false;
                }
            }
            if now < d.next {
                return true;
            }
            let group = Pid::from_child(&d.process);
            let (signal, stage) = match d.stage {
                Stage::InputClosed => (Signal::TERM, Stage::Terminated),
                Stage::Terminated | Stage::Killed => (Signal::KILL, Stage::Killed),
            };
            if d.stage != Stage::Killed {
                log::info!(
                    "child {}: still running {:?} after {:?}; sending {}",
                    d.process.id(),
                    d.stage,
                    d.grace,
                    if signal == Signal::TERM {
                        "SIGTERM"
                    } else {
                        "SIGKILL"
                    }
                );
                let _ = kill_process_group(group, signal);
            }
            d.stage = stage;
            d.next = now + d.grace;
            true
        });
    }

    /// Why `id` is gone, from its exit status when it has one: "exited with status 1",
    /// "was killed by signal 9", or `otherwise`.
    fn child_exit_reason(&mut self, id: ChildId, otherwise: &str) -> String {
        let status = self
            .children
            .live_mut(id)
            .and_then(|l| l.process.try_wait().ok().flatten());
        status.map_or_else(|| otherwise.to_string(), describe)
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
        let _ = process.kill();
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
