//! TLS: the real binary serving HTTPS and WSS with a certificate made for the test.
//!
//! Each test makes a throwaway CA and a server certificate for 127.0.0.1 and localhost with the
//! `openssl` command in a temp directory, starts `mcp-stream serve --tls-cert … --tls-key …`
//! on 127.0.0.1 port 0, and talks to it with curl or with a rustls client that trusts only that
//! CA. Every wait is a socket read timeout or a bounded wait for the process.
//!
//! A build without the `tls` feature runs one test instead: a TLS config is refused.

mod common;

#[cfg(not(feature = "tls"))]
#[test]
fn a_build_without_tls_refuses_a_tls_config_with_exit_2() {
    let out = common::run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/no/cert.pem",
            "--tls-key",
            "/no/key.pem",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(out.stderr.contains("this build has no TLS"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
}

#[cfg(feature = "tls")]
mod served {

    use std::io::{self, BufRead, BufReader, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
    use serde_json::{json, Value};
    use tungstenite::Message;

    use super::common::load::{events_to_overflow, MAX_QUEUE, PAYLOAD, SLOW_RCVBUF};
    use super::common::{
        find, request_bytes, run_to_exit, wait_exit, TempFile, BIN, CONFIG_ENV, WAIT,
    };

    // ---------------------------------------------------------------------------------------------
    // Certificates

    /// A temp directory with `ca.pem` (a throwaway CA), and `cert.pem` / `key.pem` (a server
    /// certificate it signed for 127.0.0.1 and localhost, and its key); removed on drop.
    struct Pki {
        dir: PathBuf,
    }

    impl Pki {
        fn new() -> Pki {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("mcp-stream-tls-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the temp dir");
            let pki = Pki { dir };
            pki.openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=mcp-stream test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            pki.openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ]);
            std::fs::write(
                pki.path("server.ext"),
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            )
            .unwrap();
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ]);
            pki
        }

        fn openssl(&self, args: &[&str]) {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&self.dir)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl (is it installed?)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        fn arg(&self, name: &str) -> String {
            self.path(name)
                .to_str()
                .expect("utf-8 temp path")
                .to_string()
        }

        /// A rustls client config that trusts only this CA and offers ALPN `http/1.1`.
        fn client_config(&self) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The server

    /// `mcp-stream serve` with TLS on 127.0.0.1 port 0; killed (and reaped) on drop.
    struct TlsServer {
        child: Child,
        addr: SocketAddr,
        /// The line it printed on stdout.
        line: String,
        pki: Pki,
        client_config: Arc<ClientConfig>,
        _config: Option<TempFile>,
    }

    impl TlsServer {
        /// With the certificate and key given as flags.
        fn start() -> TlsServer {
            TlsServer::start_with(None)
        }

        /// With the certificate and key in `tls.cert`, `tls.key` of a config file, merged into
        /// `config`.
        fn with_config(mut config: Value) -> TlsServer {
            TlsServer::start_with(Some(&mut config))
        }

        fn start_with(config: Option<&mut Value>) -> TlsServer {
            let pki = Pki::new();
            let mut cmd = Command::new(BIN);
            cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-level", "warn"]);
            let config = config.map(|c| {
                c["tls"] = json!({"cert": pki.arg("cert.pem"), "key": pki.arg("key.pem")});
                TempFile::config(c)
            });
            match &config {
                Some(file) => cmd.args(["--config", &file.arg()]),
                None => cmd.args([
                    "--tls-cert",
                    &pki.arg("cert.pem"),
                    "--tls-key",
                    &pki.arg("key.pem"),
                ]),
            };
            for var in CONFIG_ENV {
                cmd.env_remove(var);
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().expect("spawn mcp-stream");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut line = String::new();
                let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
                let _ = tx.send(r);
            });
            let line = match rx.recv_timeout(WAIT) {
                Ok(Ok(line)) => line,
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no first line from the server within {WAIT:?}: {other:?}");
                }
            };
            let addr = line
                .trim_end()
                .strip_prefix("listening on https://")
                .and_then(|a| a.parse::<SocketAddr>().ok());
            let Some(addr) = addr else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("unexpected first line {line:?}");
            };
            let client_config = pki.client_config();
            TlsServer {
                child,
                addr,
                line,
                pki,
                client_config,
                _config: config,
            }
        }

        /// A TLS connection, handshake done, that trusts only the test CA and checks the name
        /// 127.0.0.1.
        fn connect(&self) -> Tls {
            self.connect_stream(TcpStream::connect(self.addr).expect("connect"))
        }

        fn connect_stream(&self, tcp: TcpStream) -> Tls {
            tcp.set_read_timeout(Some(WAIT)).unwrap();
            tcp.set_write_timeout(Some(WAIT)).unwrap();
            let _ = tcp.set_nodelay(true);
            let name = ServerName::IpAddress(self.addr.ip().into());
            let conn = ClientConnection::new(self.client_config.clone(), name).unwrap();
            let mut stream = StreamOwned::new(conn, tcp);
            while stream.conn.is_handshaking() {
                stream
                    .conn
                    .complete_io(&mut stream.sock)
                    .expect("TLS handshake");
            }
            Tls {
                stream,
                buf: Vec::new(),
            }
        }

        fn sigterm(&self) {
            let status = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success());
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    // ---------------------------------------------------------------------------------------------
    // A small HTTP/1.1 client over TLS

    /// How a TLS stream ended.
    #[derive(Debug, PartialEq, Eq)]
    enum End {
        /// With `close_notify`.
        Clean,
        /// A TCP end of stream or reset without `close_notify`.
        Abrupt,
    }

    struct Tls {
        stream: StreamOwned<ClientConnection, TcpStream>,
        buf: Vec<u8>,
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        head: String,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.split("\r\n").skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
        }
    }

    impl Tls {
        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).expect("write over TLS");
            self.stream.flush().expect("flush over TLS");
        }

        /// Reads more plaintext; `Err` with how the stream ended.
        fn fill(&mut self) -> Result<(), End> {
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.stream.read(&mut chunk) {
                    Ok(0) => return Err(End::Clean),
                    Ok(n) => {
                        self.buf.extend_from_slice(&chunk[..n]);
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                        ) =>
                    {
                        return Err(End::Abrupt)
                    }
                    Err(e) => panic!(
                        "reading over TLS: {e}; have {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                }
            }
        }

        fn fill_or_panic(&mut self, what: &str) {
            if let Err(end) = self.fill() {
                panic!(
                    "{end:?} end of stream while reading {what}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }

        fn read_head(&mut self) -> Reply {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                self.fill_or_panic("a response head");
            };
            let head = String::from_utf8(self.buf.drain(..end + 4).collect()).unwrap();
            let status = head
                .strip_prefix("HTTP/1.1 ")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("status line of {head:?}"));
            Reply {
                status,
                head,
                body: Vec::new(),
            }
        }

        fn read_response(&mut self) -> Reply {
            let mut r = self.read_head();
            let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
            while self.buf.len() < len {
                self.fill_or_panic("a response body");
            }
            r.body = self.buf.drain(..len).collect();
            r
        }

        fn request(
            &mut self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Reply {
            self.send(&request_bytes(method, path, headers, body));
            self.read_response()
        }

        /// The next SSE block (up to a blank line), heartbeats included.
        fn next_block(&mut self) -> String {
            loop {
                if let Some(i) = find(&self.buf, b"\n\n") {
                    return String::from_utf8(self.buf.drain(..i + 2).collect()).unwrap();
                }
                self.fill_or_panic("an SSE block");
            }
        }

        /// The next SSE block that is not a comment.
        fn next_event(&mut self) -> String {
            loop {
                let b = self.next_block();
                if !b.starts_with(':') {
                    return b;
                }
            }
        }

        /// Reads to the end of the stream; returns how it ended and what came before.
        fn read_to_end(&mut self) -> (End, Vec<u8>) {
            loop {
                if let Err(end) = self.fill() {
                    return (end, std::mem::take(&mut self.buf));
                }
            }
        }
    }

    /// The `data:` of an SSE block, as JSON.
    fn block_data(block: &str) -> Value {
        let data = block
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no data in {block:?}"));
        serde_json::from_str(data).unwrap()
    }

    fn block_field<'a>(block: &'a str, field: &str) -> Option<&'a str> {
        block
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
    }

    /// Publishes on an open connection; asserts `202`, returns the id.
    fn publish(client: &mut Tls, body: &Value) -> String {
        let r = client.request(
            "POST",
            "/stream/publish",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 202, "{r:?}");
        r.json()["ids"][0].as_str().unwrap().to_string()
    }

    /// Opens `GET /stream/sse?topic=…` over TLS and reads its opening block.
    fn subscribe(client: &mut Tls, topic: &str) {
        client.send(&request_bytes(
            "GET",
            &format!("/stream/sse?topic={topic}"),
            &[],
            b"",
        ));
        let head = client.read_head();
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        let opening = client.next_block();
        assert!(opening.contains("event: connected"), "{opening:?}");
    }

    /// Runs curl with `args`, at most [`WAIT`]; returns its exit code and stdout.
    fn curl(args: &[&str]) -> (Option<i32>, String) {
        let mut child = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run curl (is it installed?)");
        let mut out = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let status = wait_exit(&mut child, WAIT);
        (status.code(), reader.join().unwrap())
    }

    // ---------------------------------------------------------------------------------------------
    // Tests

    #[test]
    fn the_startup_line_says_https_and_curl_with_the_ca_gets_health() {
        let server = TlsServer::start();
        assert_eq!(
            server.line,
            format!("listening on https://{}\n", server.addr)
        );
        let url = format!("https://127.0.0.1:{}/health", server.addr.port());
        let (code, out) = curl(&[
            "--cacert",
            &server.pki.arg("ca.pem"),
            "--write-out",
            "\n%{http_code} %{http_version}",
            &url,
        ]);
        assert_eq!(code, Some(0), "curl failed: {out:?}");
        assert_eq!(out, "{\"status\":\"ok\"}\n200 1.1");
        // The name localhost is in the certificate too.
        let url = format!("https://localhost:{}/health", server.addr.port());
        let (code, out) = curl(&["--cacert", &server.pki.arg("ca.pem"), &url]);
        assert_eq!((code, out.as_str()), (Some(0), "{\"status\":\"ok\"}"));
    }

    #[test]
    fn curl_without_the_ca_fails_certificate_verification() {
        let server = TlsServer::start();
        let url = format!("https://127.0.0.1:{}/health", server.addr.port());
        let (code, out) = curl(&[&url]);
        // 60: "Peer certificate cannot be authenticated with known CA certificates".
        assert_eq!(code, Some(60), "curl trusted the test server: {out:?}");
        assert_eq!(out, "");
        // The server shrugs the failed handshake off.
        let r = server.connect().request("GET", "/health", &[], b"");
        assert_eq!(r.status, 200);
    }

    #[test]
    fn alpn_is_http_1_1_and_keep_alive_requests_share_the_connection() {
        let server = TlsServer::start();
        let mut client = server.connect();
        assert_eq!(client.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        // Two pipelined requests in one record, then a third.
        let mut two = request_bytes("GET", "/health", &[], b"");
        two.extend_from_slice(&request_bytes("GET", "/health", &[], b""));
        client.send(&two);
        for _ in 0..2 {
            let r = client.read_response();
            assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
            assert_eq!(r.header("connection"), None, "{r:?}");
        }
        let r = client.request("GET", "/health", &[], b"");
        assert_eq!(r.status, 200);
    }

    #[test]
    fn an_sse_stream_over_tls_gets_published_events_small_and_large() {
        let server = TlsServer::start();
        let mut sse = server.connect();
        subscribe(&mut sse, "news");
        let mut publisher = server.connect();
        let id = publish(
            &mut publisher,
            &json!({"topic": "news", "event": "update", "data": {"headline": "hello"}}),
        );
        let block = sse.next_event();
        assert_eq!(block_field(&block, "id"), Some(id.as_str()), "{block:?}");
        assert_eq!(block_field(&block, "event"), Some("update"));
        assert_eq!(
            block_data(&block),
            json!({"type": "event", "topic": "news", "event": "update", "id": id,
                   "data": {"headline": "hello"}})
        );
        // An event of ~200 KB: many records, and more than the session buffers at once.
        let big = "0123456789".repeat(20_000);
        let id = publish(&mut publisher, &json!({"topic": "news", "data": big}));
        let block = sse.next_event();
        assert_eq!(block_field(&block, "id"), Some(id.as_str()));
        assert_eq!(block_data(&block)["data"], json!(big));
    }

    #[test]
    fn a_wss_client_joins_a_room_and_gets_a_broadcast() {
        let server = TlsServer::start();
        let url = format!("wss://127.0.0.1:{}/stream/ws", server.addr.port());
        let ws = |server: &TlsServer| {
            let tls = server.connect();
            assert!(tls.buf.is_empty());
            let (mut ws, response) = tungstenite::client(url.as_str(), tls.stream).expect("WSS");
            assert_eq!(response.status(), 101);
            let welcome = next_json(&mut ws);
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            ws
        };
        let mut member = ws(&server);
        let mut sender = ws(&server);
        send_json(&mut member, &json!({"type": "join", "room": "r"}));
        assert_eq!(
            next_json(&mut member),
            json!({"type": "joined", "room": "r"})
        );
        send_json(
            &mut sender,
            &json!({"type": "broadcast", "room": "r", "data": {"n": 1}, "exclude_self": true}),
        );
        let got = next_json(&mut member);
        assert_eq!(got["type"], "broadcast", "{got}");
        assert_eq!(got["data"], json!({"n": 1}));
        // Keep-alive of the protocol works through TLS: ping, pong.
        send_json(&mut sender, &json!({"type": "ping"}));
        assert_eq!(next_json(&mut sender), json!({"type": "pong"}));
        member.close(None).unwrap();
        loop {
            match member.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("closing: {e}"),
            }
        }
    }

    type Wss = tungstenite::WebSocket<StreamOwned<ClientConnection, TcpStream>>;

    fn send_json(ws: &mut Wss, v: &Value) {
        ws.send(Message::text(v.to_string())).expect("send");
    }

    fn next_json(ws: &mut Wss) -> Value {
        loop {
            match ws.read().expect("read a message") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn mcp_initialize_over_https() {
        let server = TlsServer::start();
        let mut client = server.connect();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "mcp-stream-tls-test", "version": "0"}}});
        let headers = [
            ("Accept", "application/json, text/event-stream"),
            ("Content-Type", "application/json"),
        ];
        let r = client.request("POST", "/mcp", &headers, init.to_string().as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        assert_eq!(v["id"], 1, "{v}");
        assert_eq!(v["result"]["protocolVersion"], "2025-11-25", "{v}");
        let session = r
            .header("mcp-session-id")
            .expect("Mcp-Session-Id")
            .to_string();
        let mut headers = headers.to_vec();
        headers.push(("Mcp-Session-Id", &session));
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let r = client.request("POST", "/mcp", &headers, initialized.to_string().as_bytes());
        assert_eq!(r.status, 202, "{r:?}");
        let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
        let r = client.request("POST", "/mcp", &headers, list.to_string().as_bytes());
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.json()["result"]["tools"].is_array(), "{r:?}");
    }

    #[test]
    fn a_plaintext_request_to_the_tls_port_gets_a_clean_400_and_the_connection_closes() {
        let server = TlsServer::start();
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.write_all(&request_bytes("GET", "/health", &[], b""))
            .unwrap();
        let mut all = Vec::new();
        // The server shuts its side after the answer: the read ends, well before the timeout.
        tcp.read_to_end(&mut all)
            .expect("read to the end of stream");
        let text = String::from_utf8(all).unwrap();
        let body = "{\"error\":\"this port speaks TLS: use https://\"}";
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        // curl says the same, and the server still serves TLS.
        let url = format!("http://127.0.0.1:{}/health", server.addr.port());
        let (code, out) = curl(&["--write-out", " %{http_code}", &url]);
        assert_eq!((code, out), (Some(0), format!("{body} 400")));
        let r = server.connect().request("GET", "/health", &[], b"");
        assert_eq!(r.status, 200);
    }

    #[test]
    fn a_client_that_sends_nothing_after_the_refusal_is_closed_too() {
        // The refusal does not wait for the peer: a client that sent one plaintext byte and
        // keeps its side open still reads the answer and the end of stream.
        let server = TlsServer::start();
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.write_all(b"G").unwrap();
        let mut all = Vec::new();
        tcp.read_to_end(&mut all)
            .expect("read to the end of stream");
        assert!(
            all.starts_with(b"HTTP/1.1 400 "),
            "{:?}",
            String::from_utf8_lossy(&all)
        );
        tcp.shutdown(Shutdown::Write).unwrap();
    }

    #[test]
    fn tls_config_from_the_config_file_and_a_refusal_at_capacity_goes_out_after_the_handshake() {
        // One connection allowed: the second is answered 503 — over TLS, once its handshake is
        // done — and closed with close_notify.
        let server = TlsServer::with_config(json!({"max_connections": 1}));
        let mut first = server.connect();
        assert_eq!(first.request("GET", "/health", &[], b"").status, 200);
        let mut second = server.connect();
        let r = second.read_response();
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(second.read_to_end(), (End::Clean, Vec::new()));
    }

    #[test]
    fn a_drain_ends_a_tls_sse_stream_with_close_notify() {
        let mut server = TlsServer::start();
        let mut sse = server.connect();
        subscribe(&mut sse, "news");
        server.sigterm();
        let (end, rest) = sse.read_to_end();
        assert_eq!(
            end,
            End::Clean,
            "rest: {:?}",
            String::from_utf8_lossy(&rest)
        );
        let status = wait_exit(&mut server.child, WAIT);
        assert!(status.success(), "{status}");
    }

    #[test]
    fn a_tls_subscriber_that_stops_reading_is_disconnected_by_the_queue_policy() {
        // TLS output buffered in the server is bounded: once the socket is full, the stream's own
        // queue grows and the `disconnect` policy closes it, while a reader gets every event.
        let server = TlsServer::with_config(json!({"streaming": {"backpressure": {
            "max_queue_bytes": MAX_QUEUE, "slow_consumer": "disconnect"}}}));
        let mut good = server.connect();
        subscribe(&mut good, "load");
        let slow_tcp = {
            use socket2::{Domain, Socket, Type};
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.set_recv_buffer_size(SLOW_RCVBUF).unwrap();
            socket.connect(&server.addr.into()).unwrap();
            TcpStream::from(socket)
        };
        let mut slow = server.connect_stream(slow_tcp);
        subscribe(&mut slow, "load");

        let mut publisher = server.connect();
        let pad = "x".repeat(PAYLOAD);
        let count = events_to_overflow();
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let id = publish(
                &mut publisher,
                &json!({"topic": "load", "data": {"i": i, "pad": pad}}),
            );
            let block = good.next_event();
            assert_eq!(block_field(&block, "id"), Some(id.as_str()), "event {i}");
            ids.push(id);
        }
        // The slow one now reads what was buffered for it: a run from the first event, then the
        // end of the stream (without close_notify: it was dropped, not drained).
        let (end, rest) = slow.read_to_end();
        assert_eq!(end, End::Abrupt);
        let text = String::from_utf8_lossy(&rest);
        let got: Vec<&str> = text
            .split("\n\n")
            .filter_map(|b| block_field(b, "id"))
            .collect();
        assert!(
            !got.is_empty() && got.len() < count,
            "got {} of {count} events",
            got.len()
        );
        assert_eq!(
            got,
            ids[..got.len()]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_bad_key_file_makes_the_binary_exit_2_naming_the_file() {
        let pki = Pki::new();
        let bad = TempFile::new(
            "bad-key.pem",
            "-----BEGIN NONSENSE-----\nAAAA\n-----END NONSENSE-----\n",
        );
        let cert = pki.arg("cert.pem");
        let run = |cert: &str, key: &str| {
            run_to_exit(
                &[
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--tls-cert",
                    cert,
                    "--tls-key",
                    key,
                ],
                &[],
            )
        };
        let out = run(&cert, &bad.arg());
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(out.stdout, "", "it must not say it listens: {out:?}");
        assert!(out.stderr.contains(&bad.arg()), "{out:?}");
        assert!(out.stderr.contains("no PEM private key"), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");

        // A file that is not there, named.
        let missing = pki.arg("missing.pem");
        let out = run(&missing, &pki.arg("key.pem"));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stderr.contains(&missing), "{out:?}");

        // A key that is not the certificate's: both files named.
        pki.openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "other.pem",
        ]);
        let out = run(&cert, &pki.arg("other.pem"));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            out.stderr.contains(&cert) && out.stderr.contains(&pki.arg("other.pem")),
            "{out:?}"
        );

        // Only one of the two is a config error, as before.
        let out = run_to_exit(
            &["serve", "--listen", "127.0.0.1:0", "--tls-cert", &cert],
            &[],
        );
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
}
