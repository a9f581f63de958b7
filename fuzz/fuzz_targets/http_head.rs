//! `http::parse_head` with the default config's caps over arbitrary bytes: no panic, results
//! within the caps, and every accessor of a parsed head (framing, keep-alive, query, upgrade)
//! total. A complete head also parses as incomplete at every shorter prefix tried.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_stream::config::Config;
use mcp_stream::proto::{http, ws};

fuzz_target!(|data: &[u8]| {
    let limits = Config::default().limits;
    let (max_headers, max_head) = (limits.max_header_count, limits.max_head_bytes);
    let Ok(Some((request, n))) = http::parse_head(data, max_headers, max_head) else {
        return;
    };
    assert!(
        n <= data.len() && n <= max_head,
        "took {n} of {}",
        data.len()
    );
    assert!(request.headers.len() <= max_headers);
    assert!(request.path.starts_with('/'));
    let _ = request.body_kind();
    let _ = request.keep_alive();
    let _ = request.expects_continue();
    let _ = http::query_pairs(&request.query).count();
    if ws::wants_upgrade(&request) {
        let _ = ws::accept(&request, None);
        let _ = ws::accept(&request, Some("mcp"));
    }
    // The head is cut at a few points: each prefix is incomplete, never another request.
    for cut in [n / 2, n.saturating_sub(1), n.saturating_sub(2)] {
        if cut < n {
            if let Ok(Some((other, m))) = http::parse_head(&data[..cut], max_headers, max_head) {
                panic!("a prefix of {cut} bytes parsed as a head of {m}: {other:?}");
            }
        }
    }
});
