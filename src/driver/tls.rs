//! TLS for the driver's connections: one rustls [`ServerConnection`](rustls::ServerConnection)
//! per accepted socket, fed from the driver's read buffer and drained into the socket by the
//! driver's write path, on the same mio loop.
//!
//! The engine never sees TLS: the driver hands it plaintext ([`Session::receive`]) and moves its
//! output slices into the session ([`Session::push`]), which encrypts them into records that
//! [`Session::write_to`] writes. The driver moves output into a session only when it has no
//! records left unsent, and rustls's buffer is bounded besides (`set_buffer_limit`: 64 KiB, or
//! `max_queue_bytes` when that is smaller). So once the socket is full, at most one buffer of
//! records waits in the session, the engine's own queue grows, and its slow-consumer policy
//! applies as it does without TLS.
//!
//! A connection whose first byte is not a TLS handshake record (a plaintext HTTP request sent to
//! the HTTPS port) gets [`refusal`] in plain HTTP and is closed.
//!
//! Without the `tls` feature the types here are empty: a config that asks for TLS is refused
//! by [`Acceptor::new`], and the driver's TLS branches are dead code.

use crate::proto::http;

/// What a plaintext request to the TLS port is told: a `400` JSON error, `Connection: close`.
pub(super) fn refusal() -> Vec<u8> {
    http::error_response(400, "this port speaks TLS: use https://", "", false)
}

/// What came of bytes read from the socket.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(super) enum Received {
    /// Plaintext, if any, was handed on; more may come.
    Open,
    /// The peer sent `close_notify` (after the plaintext that came before it).
    PeerClosed,
    /// The first byte was not a TLS handshake record: answer [`refusal`] and close.
    NotTls,
    /// A TLS error (a failed handshake, a bad record, an alert from the peer), with its
    /// reason: send what the session queued (an alert) and close.
    Failed(String),
}

#[cfg(feature = "tls")]
pub(super) use with_tls::{Acceptor, Session};
#[cfg(not(feature = "tls"))]
pub(super) use without_tls::{Acceptor, Session};

#[cfg(feature = "tls")]
mod with_tls {
    use std::io::{self, BufRead, IoSlice, Write};
    use std::path::Path;
    use std::sync::Arc;

    use mio::net::TcpStream;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{ServerConfig, ServerConnection};

    use super::Received;
    use crate::config::TlsConfig;

    /// The most TLS output buffered per connection, in bytes (rustls's own default); a smaller
    /// `max_queue_bytes` lowers it to that.
    const BUFFER_LIMIT: usize = 64 * 1024;

    /// The first byte of a TLS record that carries a handshake message (a ClientHello).
    const HANDSHAKE_RECORD: u8 = 0x16;

    /// The listener's TLS side: the certificate chain and key, loaded once and shared by every
    /// connection.
    pub(in crate::driver) struct Acceptor {
        config: Arc<ServerConfig>,
        buffer_limit: usize,
    }

    impl Acceptor {
        /// Loads `tls.cert` and `tls.key` when both are set (`None` when TLS is not
        /// configured). A file that cannot be read, holds no PEM certificate or key, or a key
        /// that does not match the certificate is an [`io::ErrorKind::InvalidInput`] error
        /// naming the file.
        pub(in crate::driver) fn new(
            tls: &TlsConfig,
            max_queue_bytes: usize,
        ) -> io::Result<Option<Acceptor>> {
            let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
                return Ok(None);
            };
            let config = server_config(cert, key).map_err(invalid)?;
            Ok(Some(Acceptor {
                config: Arc::new(config),
                buffer_limit: max_queue_bytes.clamp(1, BUFFER_LIMIT),
            }))
        }

        /// A session for a new connection.
        pub(in crate::driver) fn session(&self) -> io::Result<Box<Session>> {
            let mut conn = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
            conn.set_buffer_limit(Some(self.buffer_limit));
            Ok(Box::new(Session {
                conn,
                state: State::Fresh,
                shutdown_pending: false,
            }))
        }
    }

    fn invalid(reason: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, reason)
    }

    fn server_config(cert_path: &Path, key_path: &Path) -> Result<ServerConfig, String> {
        let cert_file = format!("TLS certificate {:?}", cert_path.display().to_string());
        let key_file = format!("TLS key {:?}", key_path.display().to_string());
        let pem = std::fs::read(cert_path).map_err(|e| format!("{cert_file}: cannot read: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{cert_file}: not valid PEM: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{cert_file}: no PEM certificate in it"));
        }
        let pem = std::fs::read(key_path).map_err(|e| format!("{key_file}: cannot read: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                format!("{key_file}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)")
            }
            e => format!("{key_file}: not valid PEM: {e}"),
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| format!("{key_file}: not a usable private key: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("{cert_file} and {key_file}: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum State {
        /// Nothing received yet.
        Fresh,
        /// Speaking TLS.
        Tls,
        /// The peer spoke plaintext and was refused: whatever it sends is dropped.
        Refused,
    }

    /// One connection's TLS state.
    pub(in crate::driver) struct Session {
        conn: ServerConnection,
        state: State,
        /// `close_notify` is queued: shut the socket's write side once it is written.
        shutdown_pending: bool,
    }

    impl Session {
        /// Takes `ciphertext` read from the socket and hands the plaintext it carries to
        /// `deliver`, in order.
        pub(in crate::driver) fn receive(
            &mut self,
            mut ciphertext: &[u8],
            mut deliver: impl FnMut(&[u8]),
        ) -> Received {
            match self.state {
                State::Refused => return Received::Open,
                State::Fresh => {
                    if ciphertext.first().is_some_and(|&b| b != HANDSHAKE_RECORD) {
                        self.state = State::Refused;
                        return Received::NotTls;
                    }
                    self.state = State::Tls;
                }
                State::Tls => {}
            }
            // rustls takes at most a record (or 4 KiB) per `read_tls`; each is processed and
            // its plaintext drained before the next, so that its buffers stay small.
            while !ciphertext.is_empty() {
                match self.conn.read_tls(&mut ciphertext) {
                    // `close_notify` came before: what follows is not read.
                    Ok(0) => return Received::Open,
                    Ok(_) => {}
                    Err(e) => return Received::Failed(e.to_string()),
                }
                let state = match self.conn.process_new_packets() {
                    Ok(state) => state,
                    Err(e) => return Received::Failed(e.to_string()),
                };
                if state.plaintext_bytes_to_read() > 0 {
                    let mut reader = self.conn.reader();
                    while let Ok(chunk) = reader.fill_buf() {
                        if chunk.is_empty() {
                            break;
                        }
                        let n = chunk.len();
                        deliver(chunk);
                        reader.consume(n);
                    }
                }
                if state.peer_has_closed() {
                    return Received::PeerClosed;
                }
            }
            Received::Open
        }

        /// Encrypts as much of `slices` as the session's buffer takes; returns how many bytes
        /// it took. During the handshake the plaintext waits in the session, and 0 means it
        /// is full until the handshake ends.
        pub(in crate::driver) fn push(&mut self, slices: &[IoSlice<'_>]) -> usize {
            self.conn.writer().write_vectored(slices).unwrap_or(0)
        }

        /// Whether TLS output (records, handshake messages, alerts) waits to be written.
        pub(in crate::driver) fn wants_write(&self) -> bool {
            self.conn.wants_write()
        }

        /// Writes waiting TLS output to `stream`, in one `writev`.
        pub(in crate::driver) fn write_to(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
            self.conn.write_tls(stream)
        }

        /// Whether the handshake is still going on (or never started).
        pub(in crate::driver) fn is_handshaking(&self) -> bool {
            self.conn.is_handshaking()
        }

        /// Whether the peer spoke plaintext and was refused.
        pub(in crate::driver) fn is_refused(&self) -> bool {
            self.state == State::Refused
        }

        /// Queues `close_notify`; [`Session::take_shutdown`] says when it has been written.
        pub(in crate::driver) fn close_notify(&mut self) {
            self.conn.send_close_notify();
            self.shutdown_pending = true;
        }

        /// Whether `close_notify` was queued and everything is written: shut the write side
        /// now (asked once).
        pub(in crate::driver) fn take_shutdown(&mut self) -> bool {
            let due = self.shutdown_pending && !self.conn.wants_write();
            if due {
                self.shutdown_pending = false;
            }
            due
        }
    }
}

#[cfg(not(feature = "tls"))]
mod without_tls {
    use std::io::{self, IoSlice};

    use mio::net::TcpStream;

    use super::Received;
    use crate::config::TlsConfig;

    /// No TLS in this build: never constructed.
    pub(in crate::driver) enum Acceptor {}

    impl Acceptor {
        /// `None` without a TLS config; an [`io::ErrorKind::InvalidInput`] error with one.
        pub(in crate::driver) fn new(
            tls: &TlsConfig,
            _max_queue_bytes: usize,
        ) -> io::Result<Option<Acceptor>> {
            if tls.is_enabled() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is configured but this build has no TLS (the `tls` feature is off)",
                ));
            }
            Ok(None)
        }

        pub(in crate::driver) fn session(&self) -> io::Result<Box<Session>> {
            match *self {}
        }
    }

    /// No TLS in this build: never constructed.
    pub(in crate::driver) enum Session {}

    impl Session {
        pub(in crate::driver) fn receive(&mut self, _: &[u8], _: impl FnMut(&[u8])) -> Received {
            match *self {}
        }

        pub(in crate::driver) fn push(&mut self, _: &[IoSlice<'_>]) -> usize {
            match *self {}
        }

        pub(in crate::driver) fn wants_write(&self) -> bool {
            match *self {}
        }

        pub(in crate::driver) fn write_to(&mut self, _: &mut TcpStream) -> io::Result<usize> {
            match *self {}
        }

        pub(in crate::driver) fn is_handshaking(&self) -> bool {
            match *self {}
        }

        pub(in crate::driver) fn is_refused(&self) -> bool {
            match *self {}
        }

        pub(in crate::driver) fn close_notify(&mut self) {
            match *self {}
        }

        pub(in crate::driver) fn take_shutdown(&mut self) -> bool {
            match *self {}
        }
    }
}
