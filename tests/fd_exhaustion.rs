//! Running out of file descriptors does not stall the listener: connections that were waiting
//! in the backlog while `accept` failed with EMFILE are served once descriptors free up, with
//! no new connection arriving to wake the listener.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server with at most `fds` open file descriptors, logging warnings to `log`.
fn start_with_fd_limit(fds: u32, log: &std::path::Path) -> (Server, SocketAddr) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_mcp-stream"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("bash runs the server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (Server(child), addr)
}

#[test]
fn connections_queued_during_emfile_are_served_when_descriptors_free_up() {
    let log = std::env::temp_dir().join(format!("mcp-stream-emfile-{}.log", std::process::id()));
    let (server, addr) = start_with_fd_limit(48, &log);
    const CLIENTS: usize = 100;
    let mut clients: Vec<Option<TcpStream>> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("the backlog takes the connection");
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            Some(s)
        })
        .collect();
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while served < CLIENTS {
        assert!(
            Instant::now() < deadline,
            "only {served} of {CLIENTS} clients were served"
        );
        for slot in clients.iter_mut() {
            let Some(stream) = slot else { continue };
            let mut buf = [0u8; 256];
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
                    // Closing it frees the server's descriptor for a queued connection.
                    *slot = None;
                    served += 1;
                }
                Ok(_) => panic!("closed without an answer"),
                Err(_) => {}
            }
        }
    }
    drop(server);
    // With 48 descriptors the server cannot hold 100 connections at once: accept failed.
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(logged.contains("Too many open files"), "{logged}");
}
