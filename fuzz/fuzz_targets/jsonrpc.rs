//! JSON text → `serde_json` → `jsonrpc::parse`: no panic; a message parsed encodes to JSON that
//! parses back to the same message (through text too, floats aside); a refusal carries a usable
//! id only.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_stream::proto::jsonrpc::{self, Message};
use serde_json::Value;

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match jsonrpc::parse(&value) {
        Ok(message) => {
            let encoded = message.encode();
            assert_eq!(jsonrpc::parse(&encoded).as_ref(), Ok(&message), "{encoded}");
            let text = encoded.to_string();
            let again: Value = serde_json::from_str(&text).expect("our encoding is JSON");
            let reparsed = jsonrpc::parse(&again).expect("our encoding parses");
            // serde_json parses floats on a best-effort basis (no `float_roundtrip`): one with
            // many digits may come back one unit in the last place off through text.
            if !has_float(&encoded) {
                assert_eq!(reparsed, message, "{text}");
            }
            match &message {
                Message::Request { id, .. } | Message::Response { id, .. } => {
                    assert!(id.is_number() || id.is_string())
                }
                Message::Notification { .. } => assert!(encoded.get("id").is_none()),
            }
        }
        Err(invalid) => {
            if let Some(id) = &invalid.id {
                assert!(id.is_number() || id.is_string(), "unusable id {id}");
            }
            let answer = jsonrpc::error(invalid.id.as_ref(), invalid.code, invalid.message);
            let text = answer.to_string();
            let back: Value = serde_json::from_str(&text).expect("our error is JSON");
            assert!(matches!(
                jsonrpc::parse(&back),
                Ok(Message::Response { .. }) | Err(_)
            ));
        }
    }
});
