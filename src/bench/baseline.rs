//! `--baseline`: the floor. A child process of the tool's own (standing for a server on the
//! other core: the same binary, run as `mcp-stream bench --baseline-writer`) listens on two
//! loopback ports, one whose connections get SSE blocks and one whose connections get WebSocket
//! frames, and on each message writes the same framed bytes to every accepted socket, with no
//! parsing, routing or queueing logic beyond holding what the kernel did not take. The
//! subscribers read and time them exactly as they read a server. In a process of its own, the
//! writer's N sockets do not count against the subscribers' open-file limit.
//!
//! The parent and the child talk over pipes: the child prints `SSE_ADDR WS_ADDR`, then
//! `accepted N` as connections arrive and `error WHY` if it stops; the parent writes each
//! message as two length-prefixed byte strings (SSE block, WebSocket frame) to its stdin, and
//! closes stdin to stop it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command as Process, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::run::{fd_error, write_some};

const SSE_LISTENER: Token = Token(0);
const WS_LISTENER: Token = Token(1);
const WAKER: Token = Token(2);
const FIRST_CONN: usize = 3;

enum Command {
    /// Write these bytes: (SSE block, WebSocket frame).
    Publish(Vec<u8>, Vec<u8>),
    Stop,
}

/// The running writer thread (in the child process).
struct WriterThread {
    /// Where SSE subscribers connect.
    pub sse_addr: SocketAddr,
    /// Where WebSocket subscribers connect.
    pub ws_addr: SocketAddr,
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    accepted: Arc<AtomicUsize>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

fn listener() -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

impl WriterThread {
    /// Binds the listeners and starts the thread.
    fn start() -> io::Result<WriterThread> {
        let mut sse = listener()?;
        let mut ws = listener()?;
        let (sse_addr, ws_addr) = (sse.local_addr()?, ws.local_addr()?);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut sse, SSE_LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut ws, WS_LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let error = Arc::new(Mutex::new(None));
        let writer = Writer {
            poll,
            listeners: [sse, ws],
            conns: Vec::new(),
            rx,
            accepted: accepted.clone(),
            error: error.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("baseline".into())
            .spawn(move || writer.run())?;
        Ok(WriterThread {
            sse_addr,
            ws_addr,
            tx,
            waker,
            accepted,
            error,
            thread: Some(thread),
        })
    }

    fn publish(&self, sse: Vec<u8>, ws: Vec<u8>) {
        if self.tx.send(Command::Publish(sse, ws)).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hidden `mcp-stream bench --baseline-writer`: the writer's side of `--baseline`, driven
/// over stdin and stdout by the parent (see the module docs).
pub fn writer_main() -> ExitCode {
    let writer = match WriterThread::start() {
        Ok(w) => w,
        Err(e) => {
            println!("error {}", fd_error(&e, "the baseline listener"));
            return ExitCode::FAILURE;
        }
    };
    println!("{} {}", writer.sse_addr, writer.ws_addr);
    let (accepted, error) = (writer.accepted.clone(), writer.error.clone());
    // Reports what the parent polls for; it ends with the process.
    std::thread::spawn(move || {
        let mut told = 0;
        loop {
            let now = accepted.load(Ordering::Acquire);
            let mut out = io::stdout().lock();
            if now != told {
                told = now;
                let _ = writeln!(out, "accepted {now}");
            }
            if let Some(e) = error.lock().ok().and_then(|e| e.clone()) {
                let _ = writeln!(out, "error {e}");
                return;
            }
            let _ = out.flush();
            drop(out);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    let mut input = io::stdin().lock();
    let mut frame = || -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let mut bytes = vec![0; u32::from_le_bytes(len) as usize];
        input.read_exact(&mut bytes)?;
        Ok(bytes)
    };
    while let (Ok(sse), Ok(ws)) = (frame(), frame()) {
        writer.publish(sse, ws);
    }
    drop(writer); // stdin closed: stop
    ExitCode::SUCCESS
}

/// The writer child process, as the run sees it.
pub struct Baseline {
    /// Where SSE subscribers connect.
    pub sse_addr: SocketAddr,
    /// Where WebSocket subscribers connect.
    pub ws_addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    accepted: Arc<AtomicUsize>,
    error: Arc<Mutex<Option<String>>>,
}

impl Baseline {
    /// Starts the writer process and waits for its addresses.
    pub fn start() -> Result<Baseline, String> {
        let exe = std::env::current_exe().map_err(|e| format!("the baseline writer: {e}"))?;
        let mut child = Process::new(exe)
            .args(["bench", "--baseline-writer"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| fd_error(&e, "the baseline writer's process"))?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let addrs = first
            .split_once(' ')
            .and_then(|(s, w)| Some((s.parse().ok()?, w.parse().ok()?)));
        let Some((sse_addr, ws_addr)) = addrs else {
            let _ = child.kill();
            let _ = child.wait();
            let why = first.strip_prefix("error ").unwrap_or(&first);
            return Err(format!("the baseline writer did not start: {why}"));
        };
        let accepted = Arc::new(AtomicUsize::new(0));
        let error = Arc::new(Mutex::new(None));
        let (a, e) = (accepted.clone(), error.clone());
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("accepted ") {
                    a.store(n.parse().unwrap_or(0), Ordering::Release);
                } else if let (Some(why), Ok(mut slot)) = (line.strip_prefix("error "), e.lock()) {
                    slot.get_or_insert_with(|| why.to_string());
                }
            }
        });
        Ok(Baseline {
            sse_addr,
            ws_addr,
            child,
            stdin,
            accepted,
            error,
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Why the writer stopped, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().map(|e| e.clone()).unwrap_or(None)
    }

    /// Has every connection written `sse` (SSE ones) or `ws` (WebSocket ones).
    pub fn publish(&mut self, sse: &[u8], ws: &[u8]) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let mut frame = Vec::with_capacity(8 + sse.len() + ws.len());
        for bytes in [sse, ws] {
            frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            frame.extend_from_slice(bytes);
        }
        if let Err(e) = stdin.write_all(&frame) {
            self.stdin = None;
            if let Ok(mut slot) = self.error.lock() {
                slot.get_or_insert_with(|| format!("the baseline writer: {e}"));
            }
        }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        self.stdin = None; // EOF: the writer stops
        let _ = self.child.wait();
    }
}

struct Conn {
    stream: TcpStream,
    ws: bool,
    /// What the kernel did not take yet.
    pending: Vec<u8>,
}

impl Conn {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.pending.is_empty() {
            let n = write_some(&mut self.stream, bytes)?;
            self.pending.extend_from_slice(&bytes[n..]);
            Ok(())
        } else {
            self.pending.extend_from_slice(bytes);
            self.flush()
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let n = write_some(&mut self.stream, &self.pending)?;
        self.pending.drain(..n);
        Ok(())
    }
}

struct Writer {
    poll: Poll,
    listeners: [TcpListener; 2],
    conns: Vec<Option<Conn>>,
    rx: mpsc::Receiver<Command>,
    accepted: Arc<AtomicUsize>,
    error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(mut self) {
        if let Err(e) = self.serve() {
            if let Ok(mut slot) = self.error.lock() {
                *slot = Some(e);
            }
        }
    }

    fn serve(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("baseline poll: {e}")),
            }
            for event in &events {
                match event.token() {
                    SSE_LISTENER => self.accept(0)?,
                    WS_LISTENER => self.accept(1)?,
                    WAKER => {}
                    Token(t) => {
                        if let Some(Some(c)) = self.conns.get_mut(t - FIRST_CONN) {
                            // Subscribers send nothing that matters here: discard it.
                            let mut sink = [0u8; 4096];
                            let closed = loop {
                                match c.stream.read(&mut sink) {
                                    Ok(0) => break true,
                                    Ok(_) => {}
                                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                    Err(e) => break e.kind() != io::ErrorKind::WouldBlock,
                                }
                            };
                            if closed || c.flush().is_err() {
                                self.conns[t - FIRST_CONN] = None;
                            }
                        }
                    }
                }
            }
            // Everything published since the last wake-up goes out in one write per socket,
            // as a server batches what it queued for a connection.
            let (mut sse, mut ws) = (Vec::new(), Vec::new());
            let stop = loop {
                match self.rx.try_recv() {
                    Ok(Command::Publish(s, w)) => {
                        sse.extend_from_slice(&s);
                        ws.extend_from_slice(&w);
                    }
                    Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => break true,
                    Err(mpsc::TryRecvError::Empty) => break false,
                }
            };
            if !sse.is_empty() {
                for slot in &mut self.conns {
                    if let Some(c) = slot {
                        let bytes = if c.ws { &ws } else { &sse };
                        if c.write(bytes).is_err() {
                            *slot = None;
                        }
                    }
                }
            }
            if stop {
                return Ok(());
            }
        }
    }

    fn accept(&mut self, which: usize) -> Result<(), String> {
        loop {
            match self.listeners[which].accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let token = Token(FIRST_CONN + self.conns.len());
                    self.poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .map_err(|e| format!("baseline register: {e}"))?;
                    self.conns.push(Some(Conn {
                        stream,
                        ws: which == 1,
                        pending: Vec::new(),
                    }));
                    self.accepted.fetch_add(1, Ordering::Release);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(fd_error(&e, "the baseline's accept")),
            }
        }
    }
}
