//! mcp-stream: a single-threaded streaming server for Server-Sent Events, WebSocket and MCP
//! transports, on one hand-rolled mio reactor.
//!
//! # Layers
//!
//! - [`proto`]: the sans-IO core. HTTP parsing, SSE encoding, the pub/sub hub with history,
//!   byte-bounded write queues and the connection state machines. Bytes and `now` in; bytes,
//!   actions and deadlines out. It never touches a socket or reads the clock.
//! - [`driver`]: the mio driver. Sockets, tokens, timers, signals and the clock. Its public face
//!   is the embedding API ([`Server`]); the standalone [`Server::run`] is a short loop over it.
//! - [`config`], [`features`], [`cli`]: the configuration tree (defaults < file < environment <
//!   flags), the feature toggles and the command line.
//!
//! The dependency runs one way: `main` → [`driver`] → [`proto`].
//!
//! # Standalone
//!
//! ```no_run
//! use mcp_stream::{config::Config, Server};
//!
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let server = Server::bind(config)?;
//! // Until SIGINT or SIGTERM, then a graceful drain.
//! server.run(|addr| println!("listening on http://{addr}"))?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Embedded in a host's `mio::Poll`
//!
//! The host picks a token range for the server, hands it the events of those tokens, sleeps no
//! longer than [`Server::poll_timeout`] and calls [`Server::on_timeout`] after every poll.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use mcp_stream::{config::Config, Server, TokenRange};
//! use mio::{Events, Poll, Token};
//!
//! const HOST_SOCKET: Token = Token(0); // the host's own tokens stay below 100
//! let mut poll = Poll::new()?;
//! let mut config = Config::default();
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let mut server = Server::bind(config)?;
//! server.register(poll.registry(), TokenRange { start: 100, len: 1 << 20 })?;
//!
//! // The host publishes from its own code (or from other threads with `server.publisher()`).
//! server.publish(Instant::now(), "news", Some("update"), &serde_json::json!({"n": 1})).unwrap();
//!
//! let mut events = Events::with_capacity(256);
//! for _ in 0..3 {
//!     // A host with deadlines of its own takes the earlier of the two.
//!     let host_deadline = Duration::from_millis(10);
//!     let timeout = server.poll_timeout(Instant::now()).map_or(host_deadline, |t| t.min(host_deadline));
//!     poll.poll(&mut events, Some(timeout))?;
//!     let now = Instant::now();
//!     for event in &events {
//!         if server.owns(event.token()) {
//!             server.handle_event(event, now);
//!         } else if event.token() == HOST_SOCKET {
//!             // the host's own work
//!         }
//!     }
//!     server.on_timeout(Instant::now());
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin_client;
pub mod cli;
pub mod config;
pub mod driver;
pub mod features;
pub mod proto;

pub use driver::{Publisher, PublisherError, Server, TokenRange};
pub use proto::engine::{CallId, Resource, ResourceReader, Tool, ToolHandler, ToolReply};
