//! `ws::Session::receive` over arbitrary bytes in arbitrary splits, with sends, pings and
//! closes of our own in between, before and after the session ends: no panic, nothing read
//! after a failure, and whatever the session writes is a sequence of frames a strict client
//! (tungstenite, client role) accepts. A second mode sends the bytes to an engine after a
//! valid upgrade (`/stream/ws`, or `/mcp` with subprotocol `mcp`), then checks that closing
//! everything leaves no connection counted.

#![no_main]

use std::io::{self, Read, Write};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_stream::config::SlowConsumer;
use mcp_stream::proto::ws::{Incoming, Session};
use mcp_stream_fuzz::{small_config, Driver};
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

#[derive(Arbitrary, Debug)]
enum Step {
    Receive(Vec<u8>),
    SendText(u16),
    Ping,
    Close(u16),
}

#[derive(Arbitrary, Debug)]
enum Input {
    Session {
        max_message: u16,
        steps: Vec<Step>,
    },
    Engine {
        mcp: bool,
        reads: Vec<Vec<u8>>,
        how: u8,
    },
}

/// The client's side of the wire: what the server wrote, read by a strict client.
#[derive(Default)]
struct Pipe {
    input: Vec<u8>,
    at: usize,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.at..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn session(max_message: u16, steps: Vec<Step>) {
    let max = usize::from(max_message).max(16);
    let mut s = Session::new(max);
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let mut client = WebSocket::from_raw_socket(Pipe::default(), Role::Client, Some(config));
    let mut failed = false;
    for step in steps.into_iter().take(64) {
        match step {
            Step::Receive(bytes) => {
                let (incoming, failure) = s.receive(&bytes);
                // A failed session reads nothing more (the engine closes it anyway): see
                // `a_websocket_session_fed_after_a_failure_does_not_panic` in tests/properties.rs.
                if failed {
                    assert!(
                        incoming.is_empty() && failure.is_none(),
                        "{incoming:?} {failure:?}"
                    );
                }
                for m in &incoming {
                    if let Incoming::Text(t) = m {
                        assert!(t.len() <= max, "a message over the cap came through");
                    }
                }
                failed |= failure.is_some();
            }
            Step::SendText(n) => s.send_text("x".repeat(usize::from(n) % 300)),
            Step::Ping => s.ping(),
            Step::Close(code) => s.close(code, "bye"),
        }
        let out = s.take_output();
        client.get_mut().input.extend_from_slice(&out);
        loop {
            match client.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => break,
                Err(e) => panic!("the client refused the server's output: {e} (after {out:?})"),
            }
        }
    }
}

fn engine(mcp: bool, reads: Vec<Vec<u8>>, how: u8) {
    let mut d = Driver::new(small_config(SlowConsumer::Disconnect));
    let upgrade = if mcp {
        "upgrade 0 /mcp mcp"
    } else {
        "upgrade 0 /stream/ws"
    };
    d.command(b"open");
    d.command(upgrade.as_bytes());
    d.flush();
    assert_eq!(
        d.engine.counters().websockets,
        1,
        "the upgrade was accepted"
    );
    for bytes in reads.iter().take(64) {
        d.input(0, bytes);
        d.flush();
    }
    d.finish(usize::from(how));
}

fuzz_target!(|input: Input| match input {
    Input::Session { max_message, steps } => session(max_message, steps),
    Input::Engine { mcp, reads, how } => engine(mcp, reads, how),
});
