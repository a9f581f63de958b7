//! `auth::verify_jwt` (HS256) over arbitrary tokens, secrets and clocks, and over tokens signed
//! with `auth::sign_jwt` from arbitrary claims, then damaged or not. No panic, and what a
//! verifier must never do: accept a signature that is not the HMAC of the token's first two
//! parts under the secret, accept another algorithm, accept a token at or past its `exp` or
//! before its `nbf` (or either without a clock), or refuse an intact token whose claims are
//! plain.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_stream::proto::auth::{sign_jwt, verify_jwt, Grant};
use ring::hmac;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
enum Token {
    /// Any text.
    Raw(String),
    /// A token signed from claims (JSON text), then perhaps with one byte changed.
    Signed {
        claims: String,
        damage: Option<(u16, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    secret: Vec<u8>,
    now: Option<u32>,
    token: Token,
}

/// Lenient base64url, as a verifier may accept it: trailing `=` and the unused low bits of the
/// last character are ignored.
fn base64url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in text.trim_end_matches('=').bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn json_part(part: &str) -> Option<Value> {
    serde_json::from_slice(&base64url(part)?).ok()
}

/// What an accepted token must satisfy.
fn check_accepted(token: &str, secret: &[u8], now: Option<u64>, grant: &Grant) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());
    let header = json_part(parts[0]).expect("accepted a header that is not JSON");
    assert_eq!(header["alg"], "HS256", "accepted alg {}", header["alg"]);
    let signed = &token[..token.rfind('.').unwrap()];
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret),
        signed.as_bytes(),
    );
    assert_eq!(
        base64url(parts[2]).as_deref(),
        Some(tag.as_ref()),
        "accepted a signature that is not the HMAC"
    );
    let claims = json_part(parts[1]).expect("accepted claims that are not JSON");
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_f64().expect("accepted a non-numeric exp");
        let now = now.expect("accepted an exp with no clock");
        assert!(
            (now as f64) < exp.floor(),
            "accepted at {now} a token expiring at {exp}"
        );
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("accepted a non-numeric nbf");
        let now = now.expect("accepted an nbf with no clock");
        assert!(
            now as f64 >= nbf.floor(),
            "accepted at {now} a token valid from {nbf}"
        );
    }
    if claims.get("mcp_stream").is_none() {
        assert_eq!(grant, &Grant::all());
    }
}

fuzz_target!(|input: Input| {
    let now = input.now.map(u64::from);
    let secret = &input.secret;
    match input.token {
        Token::Raw(token) => {
            if let Ok(grant) = verify_jwt(&token, secret, now) {
                check_accepted(&token, secret, now, &grant);
            }
        }
        Token::Signed { claims, damage } => {
            let Ok(claims) = serde_json::from_str::<Value>(&claims) else {
                return;
            };
            let token = sign_jwt(&claims, secret);
            let mut bytes = token.clone().into_bytes();
            if let Some((at, byte)) = damage {
                let at = usize::from(at) % bytes.len();
                bytes[at] = byte;
            }
            let Ok(damaged) = String::from_utf8(bytes) else {
                return;
            };
            let result = verify_jwt(&damaged, secret, now);
            if let Ok(grant) = &result {
                check_accepted(&damaged, secret, now, grant);
            }
            // An intact token of plain claims is accepted.
            let plain = claims.as_object().is_some_and(|c| {
                !c.contains_key("exp") && !c.contains_key("nbf") && !c.contains_key("mcp_stream")
            });
            if damaged == token && plain {
                assert_eq!(result, Ok(Grant::all()), "refused an intact token: {token}");
            }
        }
    }
});
