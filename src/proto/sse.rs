//! The Server-Sent Events encoding of everything an SSE stream carries.
//!
//! A stream is an HTTP/1.1 `200` whose body runs until the connection closes. It opens with a
//! `retry:` line and an `event: connected` block; each published event is one block
//! (`id:`, `event:` unless it is `message`, `data:` with the JSON envelope); `: ping` comments keep
//! idle streams alive. Every `data:` here is one line: JSON as serde_json writes it has none.

/// The heartbeat comment sent on an idle stream.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// The block for one event. `name` must hold no line break; `data` must be one line.
pub fn event_block(id: &str, name: &str, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + name.len() + data.len() + 24);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.push(b'\n');
    if name != "message" {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// A block with no id: a control event of the stream itself.
fn control_block(name: &str, data: &str) -> Vec<u8> {
    format!("event: {name}\ndata: {data}\n\n").into_bytes()
}

/// The response head of a stream; `extra_headers` are full lines, each ending in CRLF.
pub fn stream_head(extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\nConnection: close\r\n{extra_headers}\r\n"
    )
    .into_bytes()
}

/// The response head and the opening of a stream: the `retry:` line and the `connected` event.
pub fn stream_opening(retry_ms: u64, connection_id: &str, extra_headers: &str) -> Vec<u8> {
    let mut data = String::from(r#"{"status":"connected","id":"#);
    super::hub::push_json_string(&mut data, connection_id);
    data.push('}');
    let mut out = stream_head(extra_headers);
    out.extend_from_slice(
        format!("retry: {retry_ms}\nevent: connected\ndata: {data}\n\n").as_bytes(),
    );
    out
}

/// The `recovery` event that ends a replay.
pub fn recovery(recovered: bool) -> Vec<u8> {
    control_block("recovery", &format!(r#"{{"recovered":{recovered}}}"#))
}

/// The `dropped` event telling a slow client how many events it lost.
pub fn dropped(count: u64) -> Vec<u8> {
    control_block("dropped", &format!(r#"{{"dropped":{count}}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_follow_the_contract() {
        assert_eq!(
            event_block("1-2", "update", "{}"),
            b"id: 1-2\nevent: update\ndata: {}\n\n"
        );
        assert_eq!(
            event_block("1-2", "message", "{}"),
            b"id: 1-2\ndata: {}\n\n"
        );
        assert_eq!(
            recovery(false),
            b"event: recovery\ndata: {\"recovered\":false}\n\n"
        );
        assert_eq!(dropped(3), b"event: dropped\ndata: {\"dropped\":3}\n\n");
    }

    #[test]
    fn the_opening_carries_retry_and_connected() {
        let text = String::from_utf8(stream_opening(3000, "c\"1", "")).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Content-Type: text/event-stream\r\n"));
        assert!(head.contains("Cache-Control: no-cache"));
        assert_eq!(
            body,
            "retry: 3000\nevent: connected\ndata: {\"status\":\"connected\",\"id\":\"c\\\"1\"}\n\n"
        );
    }
}
