//! The client side of the admin API, for `mcp-stream features`: one blocking HTTP/1.1 request
//! to a running server, over plain TCP (an `https://` server is refused with a clear reason).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// How long the client waits to connect, and for each read or write.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read: the admin API's answers are a few hundred bytes, and whatever
/// answers at the URL given must not make the command grow without bound.
const MAX_RESPONSE: u64 = 1 << 20;

/// Sends `method path` with an optional JSON `body` to the server at `base`
/// (`http://HOST:PORT`), with `token` as its bearer token; returns the status and the JSON body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> io::Result<(u16, Value)> {
    let authority = match base.strip_prefix("http://") {
        Some(rest) => rest.trim_end_matches('/'),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only http:// servers can be reached by this command",
            ))
        }
    };
    let addr = authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address for the server"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}
